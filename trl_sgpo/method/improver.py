"""The improver role without a model: prompt rendering, target strategies and the outlier filter.

Everything here is plain Python on strings and token-id lists, so it is tested on hand-made cases.
The paper (arXiv:2507.20181) trains the improver to make "incremental yet discernible" improvements
towards the SFT reference; it does not publish how. This module is our construction:

- an *edit script* is the list of single-token operations (substitute, delete, insert) that turns
  the draft into the reference, read left to right from `difflib`'s opcodes;
- the ``interpolate`` target applies the first ``alpha`` fraction of that script (incremental);
- the ``reference`` target applies all of it (the reference itself);
- the ``keep_plausible`` target keeps the draft where the initial policy finds it at least as plausible per token
  as the reference (`plausible_keeps`), and is the reference elsewhere: on a request with many right answers a right
  draft seldom equals its reference, and a ``reference`` target teaches the improver to swap right answers;
- the filter drops targets that change nothing (not discernible) and, by Tukey's fences over the
  batch, targets whose change is unusually large or small (not incremental): measured by the edit size, or for
  ``keep_plausible`` by the plausibility gain of the moved targets (a statistic of improvement, not of edit size).
"""

import difflib
import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from ..records import Completion


TARGET_STRATEGIES = ("reference", "interpolate", "keep_plausible")
# The strategies that need the initial policy's log-probabilities of the draft and the reference.
PLAUSIBILITY_STRATEGIES = ("keep_plausible",)
# Every template shows the prompt and the draft; a reference-aware template also shows the SFT reference.
REQUIRED_TEMPLATE_FIELDS = ("prompt", "response")
_FIELD_PATTERN = re.compile(r"\{(prompt|response|reference)\}")

Prompt = str | list[dict[str, Any]]
ImproverTemplate = str | Callable[..., str | list[dict[str, Any]]]


def validate_template(template: str) -> None:
    """Raise a `ValueError` naming the missing field unless ``template`` holds ``{prompt}`` and ``{response}``."""
    missing = [name for name in REQUIRED_TEMPLATE_FIELDS if "{" + name + "}" not in template]
    if missing:
        fields = " and ".join("{" + name + "}" for name in missing)
        raise ValueError(
            f"The improver template has no {fields} field: the improver must see both the prompt and the draft. "
            "Add them, e.g. '{prompt}\\nDraft: {response}\\nImproved:' (a reference-aware template may also "
            "show {reference})."
        )


def uses_reference(template: ImproverTemplate) -> bool:
    """Whether the improver sees the SFT reference in its prompt (a string template with ``{reference}``)."""
    return isinstance(template, str) and "{reference}" in template


def fill_template(template: str, prompt: str, response: str, reference: str | None = None) -> str:
    """Fill ``{prompt}``, ``{response}`` and ``{reference}`` in one pass, so braces inside the texts are left alone."""
    values = {"prompt": prompt, "response": response, "reference": reference}
    if reference is None and "{reference}" in template:
        raise ValueError(
            "The improver template shows {reference}, but no reference was given for this prompt. A "
            "reference-aware improver can only rewrite drafts of prompts that have an SFT reference."
        )
    return _FIELD_PATTERN.sub(lambda match: values[match.group(1)], template)


def render_improver_prompt(
    template: ImproverTemplate,
    prompt: Prompt,
    response: str,
    tokenizer: PreTrainedTokenizerBase,
    reference: str | None = None,
) -> str:
    """Render the improver's prompt text for a (prompt, draft response) pair, and the reference if it shows one.

    A conversational prompt keeps its earlier turns; its last user message becomes the filled template. A text
    prompt becomes one user turn. The result goes through the tokenizer's chat template (with the generation prompt)
    when the tokenizer has one, so the improved response is generated as the assistant's turn; without a chat
    template the filled text is the prompt. A callable template is called as ``template(prompt, response)``.
    """
    if callable(template):
        rendered = template(prompt, response)
        if isinstance(rendered, list):
            return tokenizer.apply_chat_template(rendered, tokenize=False, add_generation_prompt=True)
        return _as_user_turn(rendered, [], tokenizer)
    if isinstance(prompt, str):
        return _as_user_turn(fill_template(template, prompt, response, reference), [], tokenizer)
    *history, last = prompt
    return _as_user_turn(fill_template(template, last["content"], response, reference), history, tokenizer)


def _as_user_turn(content: str, history: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        return content
    messages = [*history, {"role": "user", "content": content}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@dataclass(frozen=True)
class EditOperation:
    """One single-token edit: ``kind`` is 'substitute', 'delete' or 'insert'."""

    kind: str
    source_index: int  # position in the draft (for insert: the position it goes before)
    token: int | None  # the reference token written (None for delete)


def edit_script(draft: Sequence[int], reference: Sequence[int]) -> list[EditOperation]:
    """The single-token operations that turn ``draft`` into ``reference``, left to right.

    Built from `difflib.SequenceMatcher` opcodes (not always a minimal Levenshtein script, but close and fast):
    a 'replace' block becomes substitutions of the overlapping length, then the extra deletions or insertions.
    """
    operations: list[EditOperation] = []
    matcher = difflib.SequenceMatcher(a=list(draft), b=list(reference), autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        overlap = min(i2 - i1, j2 - j1) if tag == "replace" else 0
        for offset in range(overlap):
            operations.append(EditOperation("substitute", i1 + offset, reference[j1 + offset]))
        for index in range(i1 + overlap, i2):
            operations.append(EditOperation("delete", index, None))
        for index in range(j1 + overlap, j2):
            operations.append(EditOperation("insert", i2, reference[index]))
    return operations


def apply_edits(draft: Sequence[int], operations: Sequence[EditOperation]) -> list[int]:
    """Apply a subset of an `edit_script` (any subset: the operations are independent)."""
    substitutions = {op.source_index: op.token for op in operations if op.kind == "substitute"}
    deletions = {op.source_index for op in operations if op.kind == "delete"}
    insertions: dict[int, list[int]] = {}
    for op in operations:
        if op.kind == "insert":
            insertions.setdefault(op.source_index, []).append(op.token)
    result: list[int] = []
    for index in range(len(draft) + 1):
        result.extend(insertions.get(index, []))
        if index == len(draft):
            break
        if index in deletions:
            continue
        result.append(substitutions.get(index, draft[index]))
    return result


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of single-token operations in the edit script from ``a`` to ``b``."""
    return len(edit_script(a, b))


def plausible_keeps(
    drafts: Sequence[Completion], draft_logps: Sequence[float], reference_logps: Sequence[float]
) -> list[bool]:
    """``keep_plausible``'s decision per draft: keep it as its own target where the initial policy's mean token
    log-probability of the draft is at least the reference's (both under the policy prompt). A draft cut at the
    length limit, or empty, is never kept: it is unfinished.

    Why this rule: on the real-model benchmark's start it separated right from wrong drafts with AUC 0.82 and kept
    46% of them, 93% of those right (docs/benchmarks.md).
    """
    return [
        draft.ended and bool(draft.token_ids) and d >= r for draft, d, r in zip(drafts, draft_logps, reference_logps)
    ]


def improver_target(
    strategy: str, draft: Sequence[int], reference: Sequence[int], alpha: float = 0.5, keep: bool = False
) -> tuple[list[int], int]:
    """The target the improver learns to write for ``draft``, and the improvement size (edits applied).

    ``interpolate`` applies ``ceil(alpha * n)`` of the ``n`` edits, so any ``alpha > 0`` moves a wrong draft by at
    least one token; ``alpha = 1`` gives the reference and ``alpha = 0`` the draft. ``keep_plausible`` gives the
    draft itself where ``keep`` (`plausible_keeps`), the reference elsewhere.
    """
    if strategy not in TARGET_STRATEGIES:
        raise ValueError(f"Unknown improver target strategy {strategy!r}: choose one of {list(TARGET_STRATEGIES)}.")
    if strategy == "keep_plausible" and keep:
        return list(draft), 0
    operations = edit_script(draft, reference)
    if strategy in ("reference", "keep_plausible"):
        return list(reference), len(operations)
    applied = operations[: math.ceil(alpha * len(operations))]
    return apply_edits(draft, applied), len(applied)


def tukey_keep(sizes: Sequence[float], k: float = 1.5) -> list[bool]:
    """Keep the values inside Tukey's fences ``[Q1 - k*IQR, Q3 + k*IQR]`` (all of them below 4 values)."""
    if len(sizes) < 4:
        return [True] * len(sizes)
    q1, _, q3 = statistics.quantiles(sizes, n=4, method="inclusive")
    low, high = q1 - k * (q3 - q1), q3 + k * (q3 - q1)
    return [low <= size <= high for size in sizes]


def select_targets(
    sizes: Sequence[int], drop_unchanged: bool = True, filter_outliers: bool = True, k: float = 1.5
) -> list[bool]:
    """Which improver targets to train on: discernible (size > 0) and, among those, inside the Tukey fences."""
    keep = [size > 0 or not drop_unchanged for size in sizes]
    if filter_outliers:
        candidates = [index for index, kept in enumerate(keep) if kept]
        inside = tukey_keep([sizes[index] for index in candidates], k)
        for index, is_inside in zip(candidates, inside):
            keep[index] = is_inside
    return keep


# ----------------------------------------------------------------------------------------- the next-turn format

# How the improver is prompted: a single user turn built from a template around (x, y) (ours), or the next turn of the
# policy's own conversation, [user: x] [assistant: y] [user: instruction] [assistant: y'] (ours too: the paper does
# not publish its improver prompt). With "next_turn" the policy's prompt and draft are a prefix of the improver's
# prompt, so the rewrite is generated on the draft's cache and one forward pass scores both. "auto" picks "next_turn"
# where the data is conversational and the chat template continues the policy's prompt, "template" elsewhere.
IMPROVER_FORMATS = ("auto", "template", "next_turn")
_DRAFT_MARK = "\x00SGPO-DRAFT\x00"


def validate_instruction(instruction: str) -> None:
    """Raise a `ValueError` unless ``instruction`` is usable as the next-turn improver instruction.

    The prompt and the draft are already in the conversation, so the instruction may not show ``{prompt}`` or
    ``{response}``; it may show ``{reference}`` (a reference-aware improver).
    """
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(
            f"improver_instruction must be a non-empty string (the user turn that asks for a rewrite), got "
            f"{instruction!r}."
        )
    shown = [name for name in REQUIRED_TEMPLATE_FIELDS if "{" + name + "}" in instruction]
    if shown:
        fields = " and ".join("{" + name + "}" for name in shown)
        raise ValueError(
            f"improver_instruction shows {fields}: with improver_format='next_turn' the prompt and the draft are "
            "already the earlier turns of the conversation. Remove the field(s); {reference} is allowed."
        )


def end_of_turn_token(tokenizer: PreTrainedTokenizerBase, conversational: bool) -> int:
    """The token that ends an assistant turn, as the chat template writes it (not `eos_token`, which differs for
    some tokenizers: a base tokenizer carrying ChatML, Llama 3's ``<|end_of_text|>`` beside ``<|eot_id|>``).

    Read from the template: the first token it writes after an assistant message's content (``<|im_end|>`` for
    ChatML, ``<|eot_id|>`` for Llama 3), when that is a special token. Plain-text prompts, a template without
    one, or one that writes ordinary text there: the tokenizer's EOS.
    """
    if conversational and getattr(tokenizer, "chat_template", None) is not None:
        messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": _DRAFT_MARK}]
        try:
            rendered = tokenizer.apply_chat_template(messages, tokenize=False)
        except Exception:  # a template that refuses this conversation: the EOS below
            rendered = ""
        _, mark, after = rendered.partition(_DRAFT_MARK)
        ids = tokenizer(after, add_special_tokens=False)["input_ids"] if mark else []
        if ids and ids[0] in tokenizer.all_special_ids:
            return ids[0]
    return tokenizer.eos_token_id


def next_turn_suffix(
    instruction: str,
    prompt: Prompt,
    tokenizer: PreTrainedTokenizerBase,
    reference: str | None = None,
    policy_prompt: str | None = None,
) -> str:
    """The text that follows the draft in the next-turn conversation, up to where the rewrite starts.

    - A conversational prompt (a message list) goes through the tokenizer's chat template:
      ``[*prompt, {assistant: y}, {user: instruction}]`` with the generation prompt, and the suffix is what the
      template writes after ``y`` (the end of the assistant turn, the user turn, the next assistant header). The text
      before ``y`` must be ``policy_prompt`` (the policy's rendered prompt, when given): otherwise the draft would not
      be a continuation of what the policy saw, and a `ValueError` says so.
    - A text prompt has no turns: the suffix is the tokenizer's EOS token (the draft's end), a newline, the
      instruction and a newline, after which the rewrite is written. This plain-text rendering is our convention.

    ``{reference}`` in the instruction is filled with ``reference``.
    """
    content = fill_template(instruction, "", "", reference) if "{reference}" in instruction else instruction
    if isinstance(prompt, str):
        if tokenizer.eos_token is None:
            raise ValueError("improver_format='next_turn' with text prompts needs a tokenizer with an EOS token.")
        return f"{tokenizer.eos_token}\n{content}\n"
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "improver_format='next_turn' with conversational prompts needs a tokenizer with a chat template: set "
            "`tokenizer.chat_template`, or use improver_format='template'."
        )
    messages = [*prompt, {"role": "assistant", "content": _DRAFT_MARK}, {"role": "user", "content": content}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    before, mark, after = rendered.partition(_DRAFT_MARK)
    if not mark:
        raise ValueError(
            "improver_format='next_turn': the tokenizer's chat template does not show the assistant's draft verbatim "
            "when it is an earlier turn (it rewrites or drops assistant content), so the conversation cannot continue "
            "from the draft. Use improver_format='template'."
        )
    if policy_prompt is not None and before != policy_prompt:
        raise ValueError(
            "improver_format='next_turn': with this chat template the conversation before the draft differs from the "
            f"policy's own prompt ({before[-60:]!r} vs {policy_prompt[-60:]!r}, last 60 characters), so the draft is "
            "not a continuation of what the policy saw and its cache cannot be reused. Use "
            "improver_format='template', or a chat template whose generation prompt matches its assistant turns."
        )
    return after


# ----------------------------------------------------------------------------------------- a step's targets


def improver_targets(
    drafts: Sequence[Completion],
    references: Sequence[Completion],
    args: Any,
    plausibility: tuple[Sequence[float], Sequence[float]] | None = None,
) -> tuple[list[Completion], list[bool], list[int]]:
    """A step's improver targets (one per draft, toward its reference, `improver_target`), which of them to train on
    (`select_targets`), and their improvement sizes, as ``args`` (an `SGPOConfig`: ``improver_target``,
    ``improver_alpha``, ``improver_drop_unchanged``, ``improver_filter_outliers``, ``improver_outlier_k``) says.
    Targets are finished texts: they end with an EOS.

    ``plausibility`` (``keep_plausible``): the initial policy's mean token log-probabilities of the drafts and of the
    references. The drafts it keeps are their own targets; the outlier filter then judges the moved targets by their
    plausibility gain (the reference's mean minus the draft's), the kept ones are always kept.
    """
    strategy = args.improver_target
    if strategy in PLAUSIBILITY_STRATEGIES and plausibility is None:
        raise ValueError(f"improver_target={strategy!r} needs the initial policy's log-probabilities (plausibility).")
    keeps = plausible_keeps(drafts, *plausibility) if strategy in PLAUSIBILITY_STRATEGIES else [False] * len(drafts)
    targets, sizes = [], []
    for draft, reference, keep in zip(drafts, references, keeps):
        tokens, size = improver_target(strategy, draft.token_ids, reference.token_ids, args.improver_alpha, keep)
        targets.append(Completion(tokens, ended=True))
        sizes.append(size)
    if strategy not in PLAUSIBILITY_STRATEGIES:
        keep = select_targets(
            sizes,
            drop_unchanged=args.improver_drop_unchanged,
            filter_outliers=args.improver_filter_outliers,
            k=args.improver_outlier_k,
        )
        return targets, keep, sizes
    gains = [reference - draft for draft, reference in zip(*plausibility)]
    moved = [index for index, kept in enumerate(keeps) if not kept]
    keep = [not args.improver_drop_unchanged or size > 0 for size in sizes]
    if args.improver_filter_outliers:
        for index, inside in zip(moved, tukey_keep([gains[index] for index in moved], args.improver_outlier_k)):
            keep[index] = keep[index] and inside
    return targets, keep, sizes


def edit_toward(draft: Completion, reference: Completion, alpha: float) -> Completion:
    """The ``edit`` pair source's chosen side: the draft moved a fraction ``alpha`` of its edits toward the
    reference by arithmetic (the `interpolate` target), no model involved."""
    tokens, _ = improver_target("interpolate", draft.token_ids, reference.token_ids, alpha)
    return Completion(tokens, ended=True)
