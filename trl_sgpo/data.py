"""Checks of the training data, run when the trainer is built, before any generation or training.

SGPO reads TRL's prompt-completion format, standard (strings) or conversational (message lists); the completion is
the SFT reference that the improver learns to move drafts towards. Anything else gets a `ValueError` or `TypeError`
that names the row, the problem and the fix.
"""

from collections.abc import Iterable
from itertools import islice
from typing import Any

from datasets import Dataset, IterableDataset
from transformers import PreTrainedTokenizerBase


REQUIRED_COLUMNS = ("prompt", "completion")
PROMPT_ROLES = ("system", "user", "assistant", "tool")
ROWS_CHECKED_IN_STREAMS = 100  # an IterableDataset is only sampled: reading it whole could take hours
FORMAT_HINT = (
    "SGPO expects TRL's prompt-completion format: a 'prompt' and a 'completion' column, both strings or both lists "
    "of {'role', 'content'} messages; the completion is the SFT reference answer."
)


def reference_text(completion: str | list[dict[str, Any]]) -> str:
    """The text of an SFT reference: the string itself, or the content of its assistant message(s)."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion)


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
            f"{name} has no {' or '.join(repr(c) for c in missing)} column (it has {columns}). {FORMAT_HINT} Rename "
            "your columns, e.g. `dataset.rename_column('question', 'prompt')`."
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


def check_prompt_lengths(
    dataset: Dataset | IterableDataset,
    tokenizer: PreTrainedTokenizerBase,
    max_prompt_tokens: int,
    name: str = "train_dataset",
) -> None:
    """Reject prompts longer than ``max_prompt_tokens`` tokens once rendered (chat template included).

    Log-probabilities are computed on at most `max_length` tokens, cut from the left. The longest sequence SGPO
    scores is the improver's: the template with the prompt and a draft, then the improved response. A prompt that
    does not leave room for them would lose its beginning, the task statement, without a word; we refuse it instead.
    """
    rows = islice(dataset, ROWS_CHECKED_IN_STREAMS) if isinstance(dataset, IterableDataset) else dataset
    for index, row in enumerate(rows):
        prompt = row["prompt"]
        if isinstance(prompt, list):
            prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        length = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if length > max_prompt_tokens:
            raise ValueError(
                f"{name} row {index}: the prompt has {length} tokens, more than the {max_prompt_tokens} that fit "
                "(max_length minus the improver template, a draft of max_new_tokens and a rewrite of "
                "improver_max_new_tokens). Raise max_length, lower max_new_tokens / improver_max_new_tokens, or "
                "drop long prompts, e.g. `dataset.filter(lambda row: ...)`."
            )


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
