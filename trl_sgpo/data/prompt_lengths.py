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

from ..data.rows import reference_text
from ..method.improver import next_turn_suffix, render_improver_prompt, uses_reference
from ..method.pairs import uses_improver


LONG_PROMPT_MODES = ("error", "drop", "truncate")
ROWS_CHECKED_IN_STREAMS = 100  # an IterableDataset is only sampled: reading it whole could take hours

logger = logging.get_logger(__name__)


@dataclass(frozen=True)
class PromptBudget:
    """How many tokens a rendered prompt may have: `max_length` minus what the longest scored sequence adds to it.

    The longest sequence SGPO scores is the improver's: its template around the prompt and a draft of
    `max_new_tokens`, then a rewrite or a training target of up to `improver_tokens` (0 with pair_source='spin',
    which has no improver). A row's reference can take more: the improver's default target *is* the reference, the
    policy's pass scores it after the prompt, and a reference-aware template (`shows_reference`) shows it in the
    improver's prompt too. `limit_for` gives the room left for one row's prompt, given its reference's length.
    """

    max_length: int
    template_tokens: int
    max_new_tokens: int
    improver_tokens: int
    shows_reference: bool = False

    @classmethod
    def of_generation(cls, args: Any, template_tokens: int = 0) -> "PromptBudget":
        """The budget from the config's lengths (``args``: an `SGPOConfig`), given the template's own tokens."""
        improver_tokens, shows_reference = 0, False
        if uses_improver(args.pair_source):
            improver_tokens = args.improver_max_new_tokens or args.max_new_tokens
            next_turn = getattr(args, "improver_format", None) == "next_turn"
            template = getattr(args, "improver_instruction" if next_turn else "improver_template", None)
            shows_reference = uses_reference(template)
        return cls(args.max_length, template_tokens, args.max_new_tokens, improver_tokens, shows_reference)

    @property
    def available(self) -> int:
        """Room for a prompt whose reference is no longer than the tokens reserved for a rewrite."""
        return self.max_length - self.template_tokens - self.max_new_tokens - self.improver_tokens

    def limit_for(self, reference_tokens: int) -> int:
        """Room for the prompt of a row whose reference has ``reference_tokens`` tokens (its end of turn included).

        The policy's pass holds the prompt and the longer of a draft and the reference; the improver's, the prompt,
        template and draft, the reference where the template shows it, then the longer of a rewrite and the target
        (the reference, or an edit of the draft toward it). The improver's is the longer whenever there is one.
        """
        if not self.improver_tokens:
            return self.max_length - max(self.max_new_tokens, reference_tokens)
        shown = reference_tokens if self.shows_reference else 0
        target = max(self.improver_tokens, reference_tokens)
        return self.max_length - self.template_tokens - self.max_new_tokens - shown - target

    def arithmetic(self, reference_tokens: int = 0) -> str:
        """The sum spelled out, e.g. 'max_length 512 - improver template 220 - max_new_tokens 64 -
        improver_max_new_tokens 64 = 164' (no template term before the template is measured); with the terms of a
        row's reference where they take more than the reserved room (see `limit_for`)."""
        if self.limit_for(reference_tokens) == self.available:  # the reference fits the reserved room
            template = f" - improver template {self.template_tokens}" if self.template_tokens else ""
            return (
                f"max_length {self.max_length}{template} - max_new_tokens {self.max_new_tokens} - "
                f"improver_max_new_tokens {self.improver_tokens} = {self.available}"
            )
        limit = self.limit_for(reference_tokens)
        if not self.improver_tokens:
            return (
                f"max_length {self.max_length} - the reference {reference_tokens} (scored after the prompt, longer "
                f"than max_new_tokens {self.max_new_tokens}) = {limit}"
            )
        template = f" - improver template {self.template_tokens}" if self.template_tokens else ""
        shown = f" - the reference shown in the improver's prompt {reference_tokens}" if self.shows_reference else ""
        target = (
            f"the improver's target, up to the reference, {reference_tokens} (more than improver_max_new_tokens "
            f"{self.improver_tokens})"
            if reference_tokens > self.improver_tokens
            else f"improver_max_new_tokens {self.improver_tokens}"
        )
        return (
            f"max_length {self.max_length}{template} - max_new_tokens {self.max_new_tokens}{shown} - {target} = "
            f"{limit}"
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


def reference_tokens(completion: str | list[dict], tokenizer: PreTrainedTokenizerBase) -> int:
    """Tokens of a row's reference as it is scored: its text, then the end of turn."""
    return len(tokenizer(reference_text(completion), add_special_tokens=False)["input_ids"]) + 1


@dataclass(frozen=True)
class RowLength:
    """One row measured against the budget: its prompt's tokens and the room its reference leaves for them."""

    index: int
    prompt: int
    reference: int
    limit: int

    @property
    def fits(self) -> bool:
        return self.prompt <= self.limit

    def problem(self, budget: PromptBudget, name: str) -> str:
        """What does not fit, with the arithmetic: the prompt, or the reference that leaves it too little room."""
        arithmetic = budget.arithmetic(self.reference)
        if self.limit == budget.available:
            what = f"the prompt has {self.prompt} tokens, more than the {self.limit} that fit"
            return f"{name} row {self.index}: {what} ({arithmetic})"
        room = f"at most {self.limit} fit beside it" if self.limit > 0 else "no prompt fits beside it"
        return (
            f"{name} row {self.index}: the prompt has {self.prompt} tokens and the reference {self.reference}; "
            f"{room} ({arithmetic})"
        )

    def fixes(self, budget: PromptBudget) -> str:
        """What helps this row: for a long prompt, any of the options; beside a long reference, not a shorter
        rewrite budget; with no room at all, only more room or leaving the row out."""
        if self.limit == budget.available:
            return FIXES
        return REFERENCE_FIXES if self.limit > 0 else NO_ROOM_FIXES


def measure_row(index: int, row: dict, tokenizer: PreTrainedTokenizerBase, budget: PromptBudget) -> RowLength:
    reference = reference_tokens(row["completion"], tokenizer)
    return RowLength(index, prompt_tokens(row["prompt"], tokenizer), reference, budget.limit_for(reference))


FIXES = (
    "Raise max_length, lower max_new_tokens / improver_max_new_tokens, or set long_prompts='drop' (skip those rows) "
    "or long_prompts='truncate' (cut their prompts from the left; the reference stays whole); on the command line "
    "--long_prompts drop."
)

# A reference longer than the room for a rewrite: the improver's target is that long whatever improver_max_new_tokens.
REFERENCE_FIXES = (
    "Raise max_length or lower max_new_tokens, or set long_prompts='truncate' (cut such prompts from the left; the "
    "reference stays whole) or long_prompts='drop' (skip those rows); on the command line --long_prompts truncate."
)
# A reference that leaves no room for any prompt: only more room, or leaving the row out, helps.
NO_ROOM_FIXES = "Raise max_length, or set long_prompts='drop' to skip such rows."


def fit_prompts(
    dataset: Dataset | IterableDataset,
    tokenizer: PreTrainedTokenizerBase,
    budget: PromptBudget,
    mode: str = "error",
    name: str = "train_dataset",
) -> Dataset | IterableDataset:
    """Apply ``long_prompts`` (``mode``) to the rows that do not fit in ``max_length``.

    A row fits when its rendered prompt has at most ``budget.limit_for(reference)`` tokens: ``budget.available``
    for a reference no longer than the reserved rewrite, less for a longer one (the improver's target is the
    reference). ``"error"`` raises on the first row that does not fit (an `IterableDataset` is only sampled);
    ``"drop"`` and ``"truncate"`` return the data set without those rows, or with their prompts cut, and say how
    many, with the arithmetic. A row whose reference leaves no room for any prompt cannot be cut to fit: ``truncate``
    refuses it.
    """
    if mode not in LONG_PROMPT_MODES:
        raise ValueError(f"long_prompts must be one of {LONG_PROMPT_MODES}, got {mode!r}.")
    if budget.available < 1:
        raise ValueError(
            f"max_length leaves no room for any prompt: {budget.arithmetic()}. Raise max_length, or lower "
            "max_new_tokens / improver_max_new_tokens, or shorten improver_template."
        )
    if isinstance(dataset, IterableDataset):
        return _fit_stream(dataset, tokenizer, budget, mode, name)
    rows = [
        measure_row(index, {"prompt": prompt, "completion": completion}, tokenizer, budget)
        for index, (prompt, completion) in enumerate(zip(dataset["prompt"], dataset["completion"]))
    ]
    misfits = [row for row in rows if not row.fits]
    if not misfits:
        return dataset
    if mode == "error":
        first = misfits[0]
        raise ValueError(
            f"{first.problem(budget, name)}; {len(misfits)} of {len(rows)} rows do not fit. {first.fixes(budget)}"
        )
    if mode == "truncate":
        _refuse_unfittable(misfits, budget, name)
    longest = max(row.prompt for row in misfits)
    by_reference = sum(row.limit < budget.available for row in misfits)
    because = f"; {by_reference} of them for a long reference, which leaves their prompt less" if by_reference else ""
    action = "dropped" if mode == "drop" else "cut from the left to fit (earliest turns first)"
    logger.warning(
        f"long_prompts={mode!r}: {len(misfits)} of {len(rows)} {name} rows do not fit: a prompt may have "
        f"{budget.available} tokens ({budget.arithmetic()}){because}; longest prompt {longest}: {action}."
    )
    if mode == "drop":
        if len(misfits) == len(rows):
            raise ValueError(f"{name}: no row fits ({budget.arithmetic()}). {misfits[0].problem(budget, name)}.")
        return dataset.select(sorted(set(range(len(rows))) - {row.index for row in misfits}))
    limits = {row.index: row.limit for row in misfits}
    return dataset.map(
        lambda row, index: (
            {"prompt": truncate_prompt(row["prompt"], tokenizer, limits[index])} if index in limits else {}
        ),
        with_indices=True,
    )


def _refuse_unfittable(misfits: list[RowLength], budget: PromptBudget, name: str) -> None:
    """``truncate`` keeps the reference whole: a row whose reference leaves no room for a prompt cannot be kept."""
    hopeless = [row for row in misfits if row.limit < 1]
    if hopeless:
        raise ValueError(
            f"{hopeless[0].problem(budget, name)}; {len(hopeless)} rows are like it, and cutting their prompts "
            f"cannot help. {NO_ROOM_FIXES}"
        )


def _fit_stream(dataset: IterableDataset, tokenizer, budget: PromptBudget, mode: str, name: str) -> IterableDataset:
    if mode == "error":
        for index, row in enumerate(islice(dataset, ROWS_CHECKED_IN_STREAMS)):
            measured = measure_row(index, row, tokenizer, budget)
            if not measured.fits:
                raise ValueError(f"{measured.problem(budget, name)}. {measured.fixes(budget)}")
        return dataset
    logger.warning(
        f"long_prompts={mode!r} on a streamed {name}: rows with prompts over the {budget.available} tokens that fit "
        f"({budget.arithmetic()}, less beside a long reference) are {'dropped' if mode == 'drop' else 'cut'} as "
        "they stream, not counted up front."
    )
    if mode == "drop":
        return dataset.filter(lambda row: measure_row(0, row, tokenizer, budget).fits)

    def cut(row: dict) -> dict:
        measured = measure_row(0, row, tokenizer, budget)
        if measured.limit < 1:
            raise ValueError(f"{measured.problem(budget, name)}: cutting the prompt cannot help. {NO_ROOM_FIXES}")
        return {"prompt": truncate_prompt(row["prompt"], tokenizer, measured.limit)}

    return dataset.map(cut)
