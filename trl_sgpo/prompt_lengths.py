"""How long a prompt may be, and what happens to the rows whose prompt is longer (`SGPOConfig.long_prompts`).

The longest sequence SGPO scores is the improver's: its template around the prompt and a draft, then a rewrite,
all within `max_length`. A prompt that does not leave room for them would be cut from the left when scored, losing
its beginning (the task statement) without a word. So the whole data set is measured before training, and each row
whose rendered prompt is too long is refused (``"error"``, the default), dropped (``"drop"``), or has its prompt cut
from the left (``"truncate"``: the earliest turns first, then the start of the first remaining message), the
reference always kept whole. What was dropped or cut is counted and said once, at warning level.
"""

from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import Any

from datasets import Dataset, IterableDataset
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging

from .improver import next_turn_suffix, render_improver_prompt
from .pairs import uses_improver


LONG_PROMPT_MODES = ("error", "drop", "truncate")
ROWS_CHECKED_IN_STREAMS = 100  # an IterableDataset is only sampled: reading it whole could take hours

logger = logging.get_logger(__name__)


@dataclass(frozen=True)
class PromptBudget:
    """How many tokens a rendered prompt may have: `max_length` minus what the improver's sequence adds to it.

    The longest sequence SGPO scores is the improver's: its template around the prompt and a draft of
    `max_new_tokens`, then a rewrite of up to `improver_tokens` (0 with pair_source='spin', which has no improver).
    """

    max_length: int
    template_tokens: int
    max_new_tokens: int
    improver_tokens: int

    @classmethod
    def of_generation(cls, args: Any, template_tokens: int = 0) -> "PromptBudget":
        """The budget from the config's lengths (``args``: an `SGPOConfig`), given the template's own tokens."""
        improver_tokens = 0
        if uses_improver(args.pair_source):
            improver_tokens = args.improver_max_new_tokens or args.max_new_tokens
        return cls(args.max_length, template_tokens, args.max_new_tokens, improver_tokens)

    @property
    def available(self) -> int:
        return self.max_length - self.template_tokens - self.max_new_tokens - self.improver_tokens

    def arithmetic(self) -> str:
        """The sum spelled out, e.g. 'max_length 512 - improver template 220 - max_new_tokens 64 -
        improver_max_new_tokens 64 = 164' (no template term before the template is measured)."""
        template = f" - improver template {self.template_tokens}" if self.template_tokens else ""
        return (
            f"max_length {self.max_length}{template} - max_new_tokens {self.max_new_tokens} - improver_max_new_tokens "
            f"{self.improver_tokens} = {self.available}"
        )


def prompt_budget(args: Any, tokenizer: PreTrainedTokenizerBase) -> PromptBudget:
    """Longest prompt that leaves room for the improver's template, a draft and a rewrite within max_length."""
    if not uses_improver(args.pair_source):
        return PromptBudget.of_generation(args)
    try:  # the template's own tokens, chat markup included (counted twice with the prompt's: a safe margin)
        if args.improver_format == "next_turn":  # what follows the draft: end of turn, instruction, header
            empty = "" if getattr(tokenizer, "chat_template", None) is None else [{"role": "user", "content": ""}]
            template = next_turn_suffix(args.improver_instruction, empty, tokenizer, reference="")
        else:
            template = render_improver_prompt(args.improver_template, "", "", tokenizer, reference="")
        template_tokens = len(tokenizer(template, add_special_tokens=False)["input_ids"])
    except Exception:  # a callable template may not accept empty texts; then only the lengths are reserved
        template_tokens = 0
    return PromptBudget.of_generation(args, template_tokens)


def prompt_tokens(prompt: str | list[dict], tokenizer: PreTrainedTokenizerBase) -> int:
    """Tokens of a prompt as the policy sees it (the chat template and its generation prompt included)."""
    if isinstance(prompt, list):
        prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def truncate_prompt(prompt: str | list[dict], tokenizer: PreTrainedTokenizerBase, limit: int) -> str | list[dict]:
    """The prompt cut from the left to at most ``limit`` tokens: earliest turns first (a leading system message
    stays), then the start of the first remaining message's text, token by token."""
    if prompt_tokens(prompt, tokenizer) <= limit:
        return prompt
    if isinstance(prompt, list):
        keep_system = 1 if prompt[0].get("role") == "system" and len(prompt) > 2 else 0
        messages = list(prompt)
        while len(messages) > keep_system + 1 and prompt_tokens(messages, tokenizer) > limit:
            del messages[keep_system]
        if prompt_tokens(messages, tokenizer) <= limit:
            return messages
        first = messages[keep_system]

        def with_text(text: str) -> list[dict]:
            return [*messages[:keep_system], {**first, "content": text}, *messages[keep_system + 1 :]]

        kept = _cut_left(first["content"], tokenizer, lambda text: prompt_tokens(with_text(text), tokenizer) <= limit)
        return with_text(kept)
    return _cut_left(prompt, tokenizer, lambda text: prompt_tokens(text, tokenizer) <= limit)


def _cut_left(text: str, tokenizer: PreTrainedTokenizerBase, fits: Callable[[str], bool]) -> str:
    """The longest end of ``text`` (whole tokens) that ``fits``; binary search over how many tokens to drop."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    low, high = 0, len(ids)  # dropping `high` tokens always fits (the empty text is what is left)
    while low < high:
        middle = (low + high) // 2
        if fits(tokenizer.decode(ids[middle:])):
            high = middle
        else:
            low = middle + 1
    return tokenizer.decode(ids[low:])


def fit_prompts(
    dataset: Dataset | IterableDataset,
    tokenizer: PreTrainedTokenizerBase,
    budget: PromptBudget,
    mode: str = "error",
    name: str = "train_dataset",
) -> Dataset | IterableDataset:
    """Apply ``long_prompts`` (``mode``) to the rows whose rendered prompt has more than ``budget.available`` tokens.

    ``"error"`` raises on the first such row (an `IterableDataset` is only sampled); ``"drop"`` and ``"truncate"``
    return the data set without those rows, or with their prompts cut, and say how many, with the arithmetic.
    """
    if mode not in LONG_PROMPT_MODES:
        raise ValueError(f"long_prompts must be one of {LONG_PROMPT_MODES}, got {mode!r}.")
    limit = budget.available
    if limit < 1:
        raise ValueError(
            f"max_length leaves no room for any prompt: {budget.arithmetic()}. Raise max_length, or lower "
            "max_new_tokens / improver_max_new_tokens, or shorten improver_template."
        )
    if isinstance(dataset, IterableDataset):
        return _fit_stream(dataset, tokenizer, budget, mode, name)
    lengths = [prompt_tokens(prompt, tokenizer) for prompt in dataset["prompt"]]
    long_rows = [index for index, length in enumerate(lengths) if length > limit]
    if not long_rows:
        return dataset
    if mode == "error":
        index = long_rows[0]
        raise ValueError(
            f"{name} row {index}: the prompt has {lengths[index]} tokens, more than the {limit} that fit "
            f"({budget.arithmetic()}); {len(long_rows)} of {len(lengths)} rows are that long. Raise max_length, "
            "lower max_new_tokens / improver_max_new_tokens, or set long_prompts='drop' (skip those rows) or "
            "long_prompts='truncate' (cut their prompts from the left); on the command line --long_prompts drop."
        )
    action = "dropped" if mode == "drop" else "cut from the left to fit (earliest turns first)"
    logger.warning(
        f"long_prompts={mode!r}: {len(long_rows)} of {len(lengths)} {name} rows have prompts over the {limit} tokens "
        f"that fit ({budget.arithmetic()}), longest {max(lengths[i] for i in long_rows)}: {action}."
    )
    if mode == "drop":
        if len(long_rows) == len(lengths):
            raise ValueError(f"{name}: every prompt is over the {limit} tokens that fit ({budget.arithmetic()}).")
        return dataset.select(sorted(set(range(len(lengths))) - set(long_rows)))
    too_long = set(long_rows)
    return dataset.map(
        lambda row, index: {"prompt": truncate_prompt(row["prompt"], tokenizer, limit)} if index in too_long else {},
        with_indices=True,
    )


def _fit_stream(dataset: IterableDataset, tokenizer, budget: PromptBudget, mode: str, name: str) -> IterableDataset:
    limit = budget.available
    if mode == "error":
        for index, row in enumerate(islice(dataset, ROWS_CHECKED_IN_STREAMS)):
            length = prompt_tokens(row["prompt"], tokenizer)
            if length > limit:
                raise ValueError(
                    f"{name} row {index}: the prompt has {length} tokens, more than the {limit} that fit "
                    f"({budget.arithmetic()}). Raise max_length, lower max_new_tokens / improver_max_new_tokens, "
                    "or set long_prompts='drop' or 'truncate' (--long_prompts drop)."
                )
        return dataset
    logger.warning(
        f"long_prompts={mode!r} on a streamed {name}: rows with prompts over the {limit} tokens that fit "
        f"({budget.arithmetic()}) are {'dropped' if mode == 'drop' else 'cut'} as they stream, not counted up front."
    )
    if mode == "drop":
        return dataset.filter(lambda row: prompt_tokens(row["prompt"], tokenizer) <= limit)
    return dataset.map(lambda row: {"prompt": truncate_prompt(row["prompt"], tokenizer, limit)})
