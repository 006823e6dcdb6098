"""The training data's formats and checks, run when the trainer is built, before any generation or training.

SGPO reads TRL's prompt-completion format, standard (strings) or conversational (message lists); the completion is
the SFT reference that the improver learns to move drafts towards. TRL's conversational language-modeling format
(one ``messages`` column, as in most SFT data on the Hub) is converted to it: the last assistant turn is the
reference and the turns before it are the prompt. Anything else gets a `ValueError` or `TypeError` that names the
row, the problem and the fix.
"""

import copy
from collections.abc import Iterable
from itertools import islice
from typing import Any

from datasets import Dataset, IterableDataset
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging

from ..data.prompt_lengths import ROWS_CHECKED_IN_STREAMS, fit_prompts, prompt_budget
from ..data.rows import reference_text
from ..method.improver import next_turn_suffix, render_improver_prompt
from ..method.pairs import uses_improver


# The next-turn check renders the first row of each sequence of roles among this many rows (cheap; templates branch on
# the roles, not on the content).
ROWS_CHECKED_FOR_SHAPES = 1000


REQUIRED_COLUMNS = ("prompt", "completion")
PROMPT_ROLES = ("system", "user", "assistant", "tool")
FORMAT_HINT = (
    "SGPO expects TRL's prompt-completion format: a 'prompt' and a 'completion' column, both strings or both lists "
    "of {'role', 'content'} messages (the completion is the SFT reference answer), or a 'messages' column of "
    "conversations that end with an assistant turn (the reference)."
)

logger = logging.get_logger(__name__)


def messages_to_prompt_completion(dataset: Any, name: str = "train_dataset") -> Any:
    """Convert a ``messages`` data set (TRL's conversational language-modeling format) to prompt-completion rows.

    The last message must be the assistant's: it becomes the completion (the SFT reference) and the messages before
    it the prompt. Any other column named ``prompt`` (ultrachat_200k has one, a plain string) is replaced; other
    columns are kept. Data sets that already have a ``completion`` column, or no ``messages`` column, are returned
    unchanged, as are dicts of data sets converted one by one.
    """
    if isinstance(dataset, dict):
        return {key: messages_to_prompt_completion(value, f"{name}[{key!r}]") for key, value in dataset.items()}
    columns = getattr(dataset, "column_names", None) or []
    if "messages" not in columns or "completion" in columns:
        return dataset

    def split(row: dict, index: int) -> dict:
        messages = row["messages"]
        where = f"{name} row {index}"
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"{where}: 'messages' is empty or not a list of messages. Remove such rows.")
        roles = [message.get("role") if isinstance(message, dict) else None for message in messages]
        if "assistant" not in roles:
            raise ValueError(
                f"{where} has no assistant turn (roles {roles}): SGPO needs one as the reference answer. Remove such "
                "rows, e.g. `dataset.filter(lambda row: row['messages'][-1]['role'] == 'assistant')`."
            )
        if roles[-1] != "assistant":
            raise ValueError(
                f"{where} ends on a {roles[-1]!r} turn: the last turn must be the assistant's (it becomes the "
                "reference; the turns before it, the prompt). Drop the trailing turns, e.g. `dataset.map(...)`, or "
                "remove such rows."
            )
        return {"prompt": messages[:-1], "completion": messages[-1:]}

    removed = [column for column in ("messages", "prompt") if column in columns]
    return dataset.map(split, with_indices=True, remove_columns=removed)


def validate_prompt_completion_dataset(
    dataset: Dataset | IterableDataset, tokenizer: PreTrainedTokenizerBase, name: str = "train_dataset"
) -> None:
    """Raise a clear error unless ``dataset`` is usable by SGPO with ``tokenizer``."""
    if isinstance(dataset, dict):  # a dict of eval datasets
        for key, value in dataset.items():
            validate_prompt_completion_dataset(value, tokenizer, f"{name}[{key!r}]")
        return
    columns = getattr(dataset, "column_names", None)
    if columns is None:
        raise TypeError(f"{name} must be a `datasets.Dataset` or `IterableDataset`, got {type(dataset).__name__}.")
    missing = [column for column in REQUIRED_COLUMNS if column not in columns]
    if missing:
        raise ValueError(
            f"{name} has no {' or '.join(repr(c) for c in missing)} column (it has {columns}). {FORMAT_HINT} "
            f"{_rename_hint(columns, missing)}"
        )
    rows: Iterable[dict] = (
        islice(dataset, ROWS_CHECKED_IN_STREAMS)
        if isinstance(dataset, IterableDataset)
        else (
            {"prompt": prompt, "completion": completion}
            for prompt, completion in zip(dataset["prompt"], dataset["completion"])
        )
    )
    conversational = None
    for index, row in enumerate(rows):
        row_conversational = _check_row(row["prompt"], row["completion"], f"{name} row {index}")
        if conversational is None:
            conversational = row_conversational
        elif conversational != row_conversational:
            raise ValueError(
                f"{name} row {index} mixes formats: earlier rows are "
                f"{'conversational' if conversational else 'standard (strings)'}, this one is not. Use one format."
            )
    if conversational is None:
        raise ValueError(f"{name} is empty: SGPO needs prompts to sample from.")
    if conversational and getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            f"{name} is conversational but the tokenizer has no chat template. Set `tokenizer.chat_template`, or "
            "use a chat model's tokenizer, or pass standard (string) prompts and completions."
        )


def check_improver_template(
    template: Any, dataset: Dataset | IterableDataset, tokenizer: PreTrainedTokenizerBase
) -> None:
    """Render the improver's prompt for the first row and a placeholder draft; fail now rather than at step 1.

    A string template is checked when the config is built; a callable one only shows what it returns when called
    (e.g. messages, which need a tokenizer with a chat template).
    """
    row = next(iter(dataset))
    try:
        render_improver_prompt(template, row["prompt"], "a draft response", tokenizer, reference="a reference")
    except Exception as error:
        fix = (
            " The template returned messages but the tokenizer has no chat template: set `tokenizer.chat_template`, "
            "or return a string."
            if callable(template) and getattr(tokenizer, "chat_template", None) is None
            else ""
        )
        raise ValueError(
            f"improver_template cannot be rendered for train_dataset row 0 ({type(error).__name__}: {error}).{fix} "
            "It is called as template(prompt, response) and must return a string or a list of messages."
        ) from error


def check_next_turn_conversation(
    instruction: str, dataset: Dataset | IterableDataset, tokenizer: PreTrainedTokenizerBase
) -> None:
    """For improver_format='next_turn': render the next turn now rather than fail during training.

    A conversational prompt needs a chat template that writes an earlier assistant turn as the policy's generation
    prompt followed by the draft (so the draft continues what the policy saw); `next_turn_suffix` says what is wrong
    otherwise. Templates branch on the conversation (a system message, several turns), so the first row of each
    sequence of roles among the first ``ROWS_CHECKED_FOR_SHAPES`` rows is checked; every step checks its own rows
    again (`PromptLayout.next_turn_prompts`). The tokens after the draft must hold more than an end-of-turn token.
    """
    shapes_seen = set()
    for index, row in enumerate(islice(dataset, ROWS_CHECKED_FOR_SHAPES)):
        prompt = row["prompt"]
        shape = tuple(message["role"] for message in prompt) if isinstance(prompt, list) else "text"
        if shape in shapes_seen:
            continue
        shapes_seen.add(shape)
        policy_prompt = (
            tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            if isinstance(prompt, list)
            else prompt
        )
        try:
            suffix = next_turn_suffix(
                instruction, prompt, tokenizer, reference="a reference", policy_prompt=policy_prompt
            )
        except ValueError as error:
            raise ValueError(f"train_dataset row {index} (roles {list(shape)}): {error}") from error
        if not tokenizer(suffix, add_special_tokens=False)["input_ids"]:
            raise ValueError(
                "improver_format='next_turn': the new turn renders to no tokens with this tokenizer; check "
                "improver_instruction and the chat template."
            )


def resolve_improver_format(
    instruction: str, dataset: Dataset | IterableDataset, tokenizer: PreTrainedTokenizerBase
) -> tuple[str, str]:
    """For improver_format='auto': the format to use for this data and tokenizer, and why.

    "next_turn" where the prompts are conversational and the chat template writes an earlier assistant turn as the
    policy's generation prompt followed by the draft (`check_next_turn_conversation` on the first row); "template"
    for plain-text prompts, or when the chat template rewrites earlier turns (some templates drop a past turn's
    reasoning, for example), since the draft would then not continue what the policy saw.
    """
    row = next(iter(dataset))
    if not isinstance(row["prompt"], list) or getattr(tokenizer, "chat_template", None) is None:
        return "template", "the prompts are plain text"
    try:
        check_next_turn_conversation(instruction, dataset, tokenizer)
    except ValueError as error:
        return "template", f"the chat template does not continue the policy's prompt ({error})"
    return "next_turn", "the chat template continues the policy's conversation"


def _rename_hint(columns: list[str], missing: list[str]) -> str:
    """A rename that could fix the columns, built from the data set's own column names."""
    others = [column for column in columns if column not in REQUIRED_COLUMNS]
    if others and len(missing) <= len(others):
        mapping = ", ".join(f"{old!r}: {new!r}" for old, new in zip(others, missing))
        return f"Rename your columns if they hold these, e.g. `dataset.rename_columns({{{mapping}}})`."
    return "Rename or add the columns, e.g. `dataset.rename_columns({...})`."


def _check_row(prompt: Any, completion: Any, where: str) -> bool:
    """Check one row; return whether it is conversational."""
    if isinstance(prompt, str) and isinstance(completion, str):
        if not prompt.strip():
            raise ValueError(f"{where}: the prompt is empty. Remove empty rows, e.g. `dataset.filter(...)`.")
        if not completion.strip():
            raise ValueError(
                f"{where}: the completion (SFT reference) is empty; the improver needs a reference to learn from. "
                "Remove or fill such rows."
            )
        return False
    if isinstance(prompt, list) and isinstance(completion, list):
        _check_messages(prompt, f"{where} prompt", PROMPT_ROLES)
        _check_messages(completion, f"{where} completion", ("assistant",))
        if prompt[-1]["role"] != "user":
            raise ValueError(
                f"{where}: a conversational prompt must end with a user message (the request to answer), "
                f"it ends with role {prompt[-1]['role']!r}."
            )
        if not reference_text(completion).strip():
            raise ValueError(f"{where}: the completion (SFT reference) is empty. Remove or fill such rows.")
        return True
    raise TypeError(
        f"{where}: prompt is {type(prompt).__name__} and completion is {type(completion).__name__}. {FORMAT_HINT}"
    )


def _check_messages(messages: list, where: str, roles: tuple[str, ...]) -> None:
    if not messages:
        raise ValueError(f"{where} is an empty message list. Give at least one message.")
    for message in messages:
        if isinstance(message, dict) and message.get("content") is None:
            # A JSON file whose messages say "text" (or another key) loads with content None in every row.
            other = [
                key for key, value in message.items() if key not in ("role", "content") and isinstance(value, str)
            ]
            if other:
                raise ValueError(
                    f"{where}: the message has its text under {other[0]!r} instead of 'content' ({message!r}). "
                    f"Rename the key to 'content', e.g. `dataset.map(...)` or in the data file."
                )
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"{where}: every message must be a dict with 'role' and 'content', got {message!r}.")
        if message["role"] not in roles:
            raise ValueError(f"{where}: role {message['role']!r} is not allowed here; use one of {list(roles)}.")
        if not isinstance(message["content"], str):
            raise TypeError(
                f"{where}: message content must be a string, got {type(message['content']).__name__} "
                "(multimodal content is not supported by SGPO)."
            )
    if where.endswith("prompt") and not messages[-1]["content"].strip():
        raise ValueError(f"{where}: the last user message is empty. Remove empty rows.")


def prepare_training_data(
    args: Any,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: Any,
    eval_dataset: Any = None,
) -> tuple[Any, Any, Any]:
    """Every check of the data against the config and tokenizer, in the order a run meets them; no model needed.

    `SGPOTrainer.__init__` calls it, and the command line calls it after loading only the tokenizer, so bad data is
    refused before the model loads. Returns the config and the data sets as SGPO trains on them: `messages`
    converted to prompt-completion, long prompts handled by ``args.long_prompts``. ``improver_format='auto'`` is
    resolved in a copy of ``args`` (the caller's config is left as it was; the trainer keeps the copy, so
    checkpoints, logs and the model card record the format used), and the choice is said once at warning level.
    """
    train_dataset = messages_to_prompt_completion(train_dataset, "train_dataset")
    validate_prompt_completion_dataset(train_dataset, tokenizer, "train_dataset")
    if args.improver_format == "auto" and uses_improver(args.pair_source):
        args = copy.copy(args)
        args.improver_format, reason = resolve_improver_format(args.improver_instruction, train_dataset, tokenizer)
        logger.warning(f"improver_format='auto': using {args.improver_format!r}, as {reason}.")
    train_dataset = fit_prompts(train_dataset, tokenizer, prompt_budget(args, tokenizer), args.long_prompts)
    if args.pair_source == "sgpo" and args.improver_format == "next_turn":
        check_next_turn_conversation(args.improver_instruction, train_dataset, tokenizer)
    elif args.pair_source == "sgpo":
        check_improver_template(args.improver_template, train_dataset, tokenizer)
    if eval_dataset is not None:
        eval_dataset = messages_to_prompt_completion(eval_dataset, "eval_dataset")
        validate_prompt_completion_dataset(eval_dataset, tokenizer, "eval_dataset")
    return args, train_dataset, eval_dataset
