"""The toy world's API: datasets in TRL's format, scoring by content, and greedy evaluation of a model.

A dataset row is TRL's conversational prompt-completion format plus what the checker needs::

    {"prompt": [{"role": "user", "content": "reverse abc; upper xy; add 3 4"}],
     "completion": [{"role": "assistant", "content": "cba | XY | 7"}],
     "task": "multi", "regime": "shifted", "answer_parts": '["cba", "XY", "7"]',
     "operations": '["reverse", "upper", "add"]'}
"""

import json
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .checker import check_answer, detect_style
from .tasks import format_answer, generate_examples


# The ``evaluate`` metric module of this world; load it by path: ``evaluate.load(TOY_METRIC_PATH)``.
TOY_METRIC_PATH = str(Path(__file__).parent / "metric" / "toy_accuracy.py")
# The improver prompt for this world. Every character is a token here, so it is kept short.
TOY_IMPROVER_TEMPLATE = "{prompt}\ndraft: {response}\nimprove:"
# The next-turn improver instruction for this world (``improver_format="next_turn"``): one short word, as every
# character is a token here.
TOY_IMPROVER_INSTRUCTION = "improve"
# A reference-aware improver prompt for this world (the improver also sees the SFT reference).
TOY_REFERENCE_AWARE_TEMPLATE = "{prompt}\ndraft: {response}\nreference: {reference}\nimprove:"


def make_dataset(
    regime: str,
    split: str,
    num_examples: int,
    seed: int = 0,
    reference_style: str = "reference",
    reference_noise: float = 0.0,
) -> Dataset:
    """Build ``num_examples`` rows of ``regime`` from ``split``'s argument space.

    The completion is written in ``reference_style``: ``reference`` (the SFT references, off the policy's form in
    the ``shifted`` regime) or ``policy`` (the form the starting checkpoint was trained to write). In the
    ``plain`` regime both forms are the same string.

    ``reference_noise`` is the share of completions with a slip (see :func:`slip`): one numeric part off by one,
    as the author of a real SFT set sometimes is. The gold ``answer_parts``, which the checker scores against,
    stay right; only the reference is wrong. Which rows slip is fixed by ``(regime, split, seed)``.
    """
    if not 0.0 <= reference_noise <= 1.0:
        raise ValueError(f"reference_noise must be in [0, 1], got {reference_noise}")
    examples = generate_examples(regime, split, num_examples, seed=seed)
    noise_rng = random.Random(f"trl_sgpo.toy/noise/{regime}/{split}/{seed}")
    references = [
        format_answer(slip(example.answer_parts, noise_rng), reference_style)
        if noise_rng.random() < reference_noise
        else example.answer(reference_style)
        for example in examples
    ]
    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": example.prompt}],
                "completion": [{"role": "assistant", "content": reference}],
                "task": example.task,
                "regime": example.regime,
                "answer_parts": json.dumps(example.answer_parts),
                "operations": json.dumps([op.name for op in example.operations]),
            }
            for example, reference in zip(examples, references)
        ]
    )


def slip(parts: Sequence[str], rng: random.Random) -> list[str]:
    """``parts`` with one numeric part off by one (up or down, never below 0); unchanged if no part is numeric."""
    numeric = [i for i, part in enumerate(parts) if part.isdigit()]
    if not numeric:
        return list(parts)
    index = rng.choice(numeric)
    value = int(parts[index])
    step = 1 if value == 0 or rng.random() < 0.5 else -1
    return [str(value + step) if i == index else part for i, part in enumerate(parts)]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def score(rows: Dataset | Iterable[Mapping[str, Any]], completions: Sequence[str]) -> dict[str, Any]:
    """Score ``completions`` against the gold answers of ``rows`` (rows of :func:`make_dataset`), by content.

    Returns ``exact_match`` and ``partial_credit`` over all rows and ``per_task`` (``multi`` is the shifted
    regime); ``per_operation``, the fraction of each operation's parts that are right; and, where there are
    multi-part rows, ``style``: the fraction of those completions in the ``policy``, ``reference`` or
    ``other`` surface form (a diagnostic of the form shift, not part of the score).
    """
    rows = list(rows)
    if len(rows) != len(completions):
        raise ValueError(f"got {len(completions)} completions for {len(rows)} rows")
    exact: dict[str, list[float]] = defaultdict(list)
    partial: dict[str, list[float]] = defaultdict(list)
    per_operation: dict[str, list[float]] = defaultdict(list)
    styles: list[str] = []
    for row, completion in zip(rows, completions):
        gold = json.loads(row["answer_parts"])
        check = check_answer(completion, gold)
        for key in ("all", row["task"]):
            exact[key].append(float(check.exact_match))
            partial[key].append(check.partial_credit)
        for operation, correct in zip(json.loads(row["operations"]), check.part_correct):
            per_operation[operation].append(float(correct))
        if len(gold) > 1:
            styles.append(detect_style(completion))
    result: dict[str, Any] = {
        "exact_match": _mean(exact.pop("all", [])),
        "partial_credit": _mean(partial.pop("all", [])),
        "num_examples": len(rows),
        "per_task": {
            task: {
                "exact_match": _mean(exact[task]),
                "partial_credit": _mean(partial[task]),
                "num_examples": len(exact[task]),
            }
            for task in sorted(exact)
        },
        "per_operation": {operation: _mean(values) for operation, values in sorted(per_operation.items())},
    }
    if styles:
        result["style"] = {style: styles.count(style) / len(styles) for style in ("policy", "reference", "other")}
    return result


def _default_max_new_tokens(rows: Sequence[Mapping[str, Any]], tokenizer: PreTrainedTokenizerBase) -> int:
    """Room for the longest gold answer in either surface form, plus a margin for a wrong, longer answer."""
    longest = max(
        len(tokenizer(format_answer(json.loads(row["answer_parts"]), style), add_special_tokens=False).input_ids)
        for row in rows
        for style in ("policy", "reference")
    )
    return longest + 8


@torch.no_grad()
def generate_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[dict[str, str]]],
    batch_size: int = 64,
    max_new_tokens: int = 48,
) -> list[str]:
    """Greedy answers to conversational ``prompts``, through the chat template, in the order of ``prompts``.

    Prompts are batched by length (left padding), so little compute goes to padding.
    """
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    completions = [""] * len(texts)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            inputs = tokenizer(
                [texts[i] for i in batch],
                return_tensors="pt",
                padding=True,
                padding_side="left",
                add_special_tokens=False,
            ).to(model.device)
            output = model.generate(
                **inputs,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            for i, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                completions[i] = text
    finally:
        model.train(was_training)
    return completions


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset | Sequence[Mapping[str, Any]],
    batch_size: int = 64,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """Greedy-decode an answer to every prompt of ``dataset`` and :func:`score` the answers.

    ``max_new_tokens`` defaults to the longest gold answer (in either form) plus a margin. The result also holds
    the ``completions``, in the order of the dataset.
    """
    rows = list(dataset)
    if max_new_tokens is None:
        max_new_tokens = _default_max_new_tokens(rows, tokenizer)
    completions = generate_completions(model, tokenizer, [row["prompt"] for row in rows], batch_size, max_new_tokens)
    return {**score(rows, completions), "completions": completions}


@torch.no_grad()
def pass_at_k(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset | Sequence[Mapping[str, Any]],
    k: int = 8,
    temperature: float = 1.0,
    max_new_tokens: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """The headroom on-policy methods can reach: greedy exact match against ``k`` samples per prompt.

    Returns ``greedy`` (exact match of the greedy answer), ``sample`` (of one sample, averaged over the ``k``),
    ``pass_at_k`` (some sample is exact) and ``mixed`` (some but not all samples are exact: the prompts whose
    samples a reward can tell apart), with ``k``.
    """
    rows = list(dataset)
    if max_new_tokens is None:
        max_new_tokens = _default_max_new_tokens(rows, tokenizer)
    greedy = score(rows, generate_completions(model, tokenizer, [r["prompt"] for r in rows], 64, max_new_tokens))
    texts = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    solved = []
    try:
        for start in range(0, len(rows), 32):
            chunk = texts[start : start + 32]
            inputs = tokenizer(
                chunk, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
            ).to(model.device)
            output = model.generate(
                **inputs,
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                num_return_sequences=k,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            decoded = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for offset, row in enumerate(rows[start : start + 32]):
                gold = json.loads(row["answer_parts"])
                solved.append(
                    [check_answer(text, gold).exact_match for text in decoded[offset * k : (offset + 1) * k]]
                )
    finally:
        model.train(was_training)
    return {
        "k": k,
        "greedy": greedy["exact_match"],
        "sample": _mean([sum(s) / k for s in solved]),
        "pass_at_k": _mean([float(any(s)) for s in solved]),
        "mixed": _mean([float(0 < sum(s) < k) for s in solved]),
    }
