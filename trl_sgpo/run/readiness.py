"""Step 1 that ends when the improver is ready (`SGPOConfig.improver_ready_at`), measured without a reward.

Every ``improver_readiness_steps`` steps of Step 1, the current model drafts greedy answers to a fixed slice of
held-out training prompts (``improver_readiness_prompts`` rows, set aside from training) and rewrites them greedily
as the improver. The readiness is the share of rewrites whose token overlap with the SFT reference
(`improver.token_overlap`, F1) beats their draft's by at least ``READINESS_MIN_GAIN`` (a discernible improvement; a
draft already equal to the reference counts when its rewrite stays so). Once
it reaches ``improver_ready_at``, Step 1 ends and DPO starts; ``improver_warmup_steps`` is the cap. Each measurement
is logged (``sgpo/improver_readiness``, and ``sgpo/readiness_rewrite_closer``, the edit-distance share, beside it)
and said at warning level, so the curve is on the console.
"""

from collections.abc import Callable
from typing import Any

import torch
from accelerate.utils import broadcast_object_list
from datasets import Dataset
from torch import nn
from transformers import PreTrainedTokenizerBase, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.utils import logging

from ..method.improver import edit_distance, token_overlap
from ..method.schedule import IMPROVER
from ..step.drafts import DraftStage
from ..step.rewrite import Rewriter
from .phases import SGPOPhaseCallback


logger = logging.get_logger(__name__)


def set_aside_readiness_rows(args: Any, train_dataset: Any) -> tuple[Any, dict[str, list] | None]:
    """With ``improver_ready_at``: the training data without its last ``improver_readiness_prompts`` rows, and those
    rows (the held-out slice the readiness is measured on). Otherwise the data unchanged and None."""
    if args.improver_ready_at is None:
        return train_dataset, None
    if not isinstance(train_dataset, Dataset):
        raise ValueError(
            "improver_ready_at sets training rows aside to measure the improver on, which needs a map-style "
            "Dataset (not a stream). Load the data without streaming, or unset improver_ready_at."
        )
    held_out = args.improver_readiness_prompts
    if len(train_dataset) <= held_out:
        raise ValueError(
            f"improver_ready_at sets improver_readiness_prompts={held_out} rows aside, and train_dataset has only "
            f"{len(train_dataset)}: lower improver_readiness_prompts or add rows."
        )
    rows = train_dataset.select(range(len(train_dataset) - held_out, len(train_dataset)))
    return train_dataset.select(range(len(train_dataset) - held_out)), rows[:]


# A rewrite counts as progress when its token overlap with the reference (F1) beats the draft's by this much. Without
# a margin, near-zero overlaps decide by noise: on SmolLM2's digit-level tokenizer the garbage rewrite "protein
# strengthens the bones 2+times more than 100%." shares two digits with the reference "122" (F1 0.22) and beat a
# wrong draft of 36 tokens (F1 0.15); the good rewrites "The sum is 122." and "80 + 42 = 122" gain 0.40 and 0.28.
READINESS_MIN_GAIN = 0.1


def readiness_of(drafts, rewrites, references) -> tuple[float, float]:
    """(share of rewrites whose token overlap with the reference beats their draft's by ``READINESS_MIN_GAIN``, or
    that keep a right draft right; share closer by edit distance, for comparison)."""
    gains, closer = [], []
    for draft, rewrite, reference in zip(drafts, rewrites, references):
        before = token_overlap(draft.token_ids, reference.token_ids)
        after = token_overlap(rewrite.token_ids, reference.token_ids)
        gains.append(float(after >= before + READINESS_MIN_GAIN or before == after == 1.0))
        closer.append(
            float(
                edit_distance(rewrite.token_ids, reference.token_ids)
                < edit_distance(draft.token_ids, reference.token_ids)
            )
        )
    return sum(gains) / len(gains), sum(closer) / len(closer)


class ImproverReadiness(TrainerCallback):
    """Measures the improver on held-out rows during Step 1 and ends Step 1 once it is ready (see the module).

    Args:
        rows: the held-out prompts and completions (columns of a Dataset slice, `set_aside_readiness_rows`).
        draft: the step's draft stage (greedy here).
        rewrite: the step's improver stage (greedy here).
        tokenizer: decodes the example shown on the console.
        model: the model as the run wraps it, now.
        phases: the run's phase callback, now (it is replaced on resume).
        report: logs a named value with the step's metrics.
    """

    def __init__(
        self,
        rows: dict[str, list],
        draft: DraftStage,
        rewrite: Rewriter,
        tokenizer: PreTrainedTokenizerBase,
        model: Callable[[], nn.Module],
        phases: Callable[[], SGPOPhaseCallback],
        report: Callable[[str, float], None],
    ):
        self.rows = rows
        self.draft, self.rewrite, self.tokenizer = draft, rewrite, tokenizer
        self.model, self.phases, self.report = model, phases, report
        self.curve: list[tuple[int, float, float]] = []  # (global step, readiness, edit-distance closer share)

    def measure(self) -> tuple[float, float, str]:
        """The readiness of the current model on the held-out rows (greedy drafts and rewrites), the edit-distance
        share beside it, and the first row as ``draft -> rewrite (reference)`` to show on the console."""
        model = self.model()
        was_training = model.training
        model.eval()
        batch = self.draft(model, self.rows, role="eval")  # a DPO step's first stage, greedy
        drafts = batch.drafts
        rewrites = self.rewrite(model, batch, role="improver_greedy").completions
        model.train(was_training)

        def shown(completion) -> str:
            text = self.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
            return repr(text if len(text) <= 60 else text[:57] + "...")

        example = f"{shown(drafts[0])} -> {shown(rewrites[0])} (reference {batch.reference_texts[0][:60]!r})"
        return (*readiness_of(drafts, rewrites, batch.references), example)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        phases = self.phases()
        step = state.global_step  # steps done; the next step's index
        if phases.warmup_ended_at is not None or phases.phase != IMPROVER or step > phases.warmup_cap:
            return
        if step == phases.warmup_cap:  # the cap: DPO starts whatever the readiness
            logger.warning(
                "Step 1 reached its cap (improver_warmup_steps=%d) before the improver was ready (last readiness %s; "
                "needs %.0f%%): DPO starts on rewrites that rarely improve their drafts. Lengthen Step 1, or check "
                "improver_template / improver_instruction.",
                step,
                f"{100 * self.curve[-1][1]:.0f}%" if self.curve else "not measured",
                100 * args.improver_ready_at,
            )
            return
        if step % args.improver_readiness_steps:
            return
        with torch.no_grad():
            measured = list(self.measure())
        broadcast_object_list(measured, from_process=0)  # every process decides alike
        readiness, closer, example = measured
        self.curve.append((step, readiness, closer))
        self.report("sgpo/improver_readiness", readiness)
        self.report("sgpo/readiness_rewrite_closer", closer)
        ready = readiness >= args.improver_ready_at
        logger.warning(
            "Step 1 readiness at step %d: %.0f%% of %d held-out rewrites gain token overlap with the reference "
            "(edit-distance closer: %.0f%%; needs %.0f%%)%s First row: %s",
            step,
            100 * readiness,
            len(self.rows["prompt"]),
            100 * closer,
            100 * args.improver_ready_at,
            ": Step 1 ends, DPO starts." if ready else ".",
            example,
        )
        if ready:
            phases.end_warmup_at(step)
