"""Step 1 that ends when the improver is ready (`SGPOConfig.improver_ready_at`), measured without a reward.

Every ``improver_readiness_steps`` steps of Step 1, the current model drafts greedy answers to a fixed slice of
held-out training prompts (``improver_readiness_prompts`` rows, set aside from training) and rewrites them greedily
as the improver. The readiness (`readiness_of`) is the share of rows where the improver does what Step 1 teaches,
judged by the initial policy (the DPO reference model), not by equality with the SFT reference: where the initial
policy finds the draft at least as plausible per token as the reference (`method.improver.plausible_keeps`: on a
request with many right answers, a right draft), the rewrite keeps the draft; elsewhere it changes it into something
the initial policy finds more plausible per token than the draft. A rewrite that swaps a right answer for another,
or garbles a wrong one, is not ready. Once it reaches ``improver_ready_at``, Step 1 ends and DPO starts;
``improver_warmup_steps`` is the cap, and reaching it unready is said at error level. Each measurement is logged
(``sgpo/improver_readiness``, and ``sgpo/readiness_rewrite_closer``, the share of rewrites closer to the reference
by edit distance, beside it) and said at warning level, so the curve is on the console.
"""

from collections.abc import Callable
from typing import Any

import torch
from accelerate.utils import broadcast_object_list
from datasets import Dataset
from torch import nn
from transformers import PreTrainedTokenizerBase, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.utils import logging

from ..method.improver import edit_distance, plausible_keeps
from ..method.schedule import IMPROVER
from ..records import Completion
from ..step.drafts import DraftStage
from ..step.losses import ReferenceLogps, mean_token_logps
from ..step.pair_gates import margins
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


def readiness_of(
    drafts: list[Completion],
    rewrites: list[Completion],
    keeps: list[bool],
    rewrite_margins: list[float],
) -> float:
    """The share of rows where the improver did what Step 1 teaches: ``keeps[i]`` (the initial policy finds the
    draft as plausible as its reference) and the rewrite is the draft; or not ``keeps[i]``, and the rewrite differs
    from the draft and is more plausible per token under the initial policy (``rewrite_margins[i] > 0``: its mean
    token log-probability minus the draft's)."""
    done = [
        rewrite.token_ids == draft.token_ids if keep else rewrite.token_ids != draft.token_ids and margin > 0
        for draft, rewrite, keep, margin in zip(drafts, rewrites, keeps, rewrite_margins)
    ]
    return sum(done) / len(done)


def closer_share(drafts: list[Completion], rewrites: list[Completion], references: list[Completion]) -> float:
    """The share of rewrites closer to their reference than their draft by edit distance (shown for comparison)."""
    closer = [
        edit_distance(rewrite.token_ids, reference.token_ids) < edit_distance(draft.token_ids, reference.token_ids)
        for draft, rewrite, reference in zip(drafts, rewrites, references)
    ]
    return sum(closer) / len(closer)


class ImproverReadiness(TrainerCallback):
    """Measures the improver on held-out rows during Step 1 and ends Step 1 once it is ready (see the module).

    Args:
        rows: the held-out prompts and completions (columns of a Dataset slice, `set_aside_readiness_rows`).
        draft: the step's draft stage (greedy here).
        rewrite: the step's improver stage (greedy here).
        tokenizer: decodes the example shown on the console.
        reference_logps: the initial policy's (the DPO reference model's) per-token log-probabilities of a batch's
            rows, without gradients.
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
        reference_logps: ReferenceLogps,
        model: Callable[[], nn.Module],
        phases: Callable[[], SGPOPhaseCallback],
        report: Callable[[str, float], None],
    ):
        self.rows = rows
        self.draft, self.rewrite, self.tokenizer, self.reference_logps = draft, rewrite, tokenizer, reference_logps
        self.model, self.phases, self.report = model, phases, report
        self.curve: list[tuple[int, float, float]] = []  # (global step, readiness, edit-distance closer share)

    def last(self) -> tuple[float, bool] | None:
        """The last readiness measured and whether Step 1 ended because the improver was ready; None if none was
        measured."""
        if not self.curve:
            return None
        return self.curve[-1][1], self.phases().warmup_ended_at is not None

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
        layout = self.draft.layout
        answers = layout.pad(drafts + batch.references)
        means = mean_token_logps(self.reference_logps(batch, answers), answers.mask)
        keeps = plausible_keeps(drafts, means[: len(drafts)], means[len(drafts) :])
        pair = layout.pad(rewrites + drafts)
        rewrite_margins = margins(self.reference_logps(batch, pair), pair.mask)

        def shown(completion) -> str:
            text = self.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
            return repr(text if len(text) <= 60 else text[:57] + "...")

        example = f"{shown(drafts[0])} -> {shown(rewrites[0])} (reference {batch.reference_texts[0][:60]!r})"
        readiness = readiness_of(drafts, rewrites, keeps, rewrite_margins)
        return readiness, closer_share(drafts, rewrites, batch.references), example

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        phases = self.phases()
        step = state.global_step  # steps done; the next step's index
        if phases.warmup_ended_at is not None or phases.phase != IMPROVER or step > phases.warmup_cap:
            return
        if step == phases.warmup_cap:  # the cap: DPO starts whatever the readiness, said loudly
            logger.error(
                "NOT READY: Step 1 reached its cap (improver_warmup_steps=%d) before the improver was ready (last "
                "readiness %s; needs %.0f%%). DPO now trains on rewrites that the improver has not learned to make: "
                "expect the policy to get worse. Lengthen Step 1 (improver_warmup_steps), raise "
                "improver_learning_rate, or check improver_instruction / improver_template.",
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
            "Step 1 readiness at step %d: %.0f%% of %d held-out rewrites keep a plausible draft or make an "
            "implausible one more plausible (edit-distance closer: %.0f%%; needs %.0f%%)%s First row: %s",
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
            if phases.warmup_only:  # a Step-1-only run is over once its improver is ready
                control.should_training_stop = True
