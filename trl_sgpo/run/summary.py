"""What a run did, said at its end: Step 1 and DPO steps, pairs kept out of drafted and why the rest were dropped,
the health signal and the improver's readiness, with a warning where the run was too short or kept too few pairs.

`RunSummary` reads every step's `StepRecord` (as the sample tables do), sums the counts of this process, and at the
end of training reduces them over processes and says the summary once, on the main process. The trainer keeps it as
``run_summary`` (the model card shows its figures).
"""

import math
from collections import Counter
from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.utils import logging

from ..method.pairs import DROP_REASONS
from ..method.schedule import DPO, IMPROVER
from ..method.step_stats import REWRITE_CLOSER_WARNING_BELOW, REWRITE_HEALTH_WINDOW
from ..records import StepRecord


logger = logging.get_logger(__name__)

# A run that kept fewer DPO pairs than this share of its drafts taught the policy little: said at the end.
FEW_PAIRS_BELOW = 0.2


@dataclass
class RunCounts:
    """The run's counts, summed over its steps (micro-steps) on this process."""

    steps: Counter = field(default_factory=Counter)  # phase -> micro-steps
    drafted: int = 0  # DPO pairs drafted (one per draft of a DPO step)
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> pairs
    closer: float = 0.0  # DPO steps' sum of sgpo/rewrite_closer (improver rewrites)
    closer_steps: int = 0


class RunSummary(TrainerCallback):
    """Counts what the run's steps did (`on_step_record`) and says it when training ends.

    Args:
        reduce: sums a list of numbers over the run's processes (``accelerator.reduce`` on a tensor).
        readiness: the improver's last readiness measurement and whether Step 1 ended ready, now (None without
            ``improver_ready_at``).
    """

    def __init__(self, reduce, readiness=None):
        self.reduce, self.readiness = reduce, readiness
        self.counts = RunCounts()
        self.figures: dict = {}
        self.said_truncation = False

    def on_step_record(self, record: StepRecord) -> None:
        counts = self.counts
        counts.steps[record.phase] += 1
        if record.phase != DPO or record.pair_verdicts is None:
            return
        counts.drafted += len(record.pair_verdicts)
        counts.kept += record.pair_verdicts.count("kept")
        if not self.said_truncation and record.pair_verdicts.count("truncated") > len(record.pair_verdicts) / 2:
            self.said_truncation = True  # said at the first DPO step that loses most pairs this way, not at the end
            logger.warning(
                "%d of this step's %d DPO pairs were dropped because a side was cut at the length limit (no end of "
                "turn): raise max_new_tokens / improver_max_new_tokens to fit the answers. Said once.",
                record.pair_verdicts.count("truncated"),
                len(record.pair_verdicts),
            )
        counts.dropped.update(verdict for verdict in record.pair_verdicts if verdict != "kept")
        closer = record.stats.get("sgpo/rewrite_closer", math.nan)
        if record.rewrites is not None and not math.isnan(closer):  # NaN: no rewrite changed its draft
            counts.closer += closer
            counts.closer_steps += 1

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        counts = self.counts
        values = [counts.steps[IMPROVER], counts.steps[DPO], counts.drafted, counts.kept, counts.closer]
        values += [counts.closer_steps, *(counts.dropped[reason] for reason in DROP_REASONS)]
        totals = self.reduce(torch.tensor(values, dtype=torch.float64)).tolist()
        improver_steps, dpo_steps, drafted, kept = (int(value) for value in totals[:4])
        closer_sum, closer_steps = totals[4:6]
        dropped = {reason: int(value) for reason, value in zip(DROP_REASONS, totals[6:]) if value}
        closer = closer_sum / closer_steps if closer_steps else None
        self.figures = {
            "step1_steps": improver_steps // max(args.gradient_accumulation_steps, 1),
            "dpo_steps": dpo_steps // max(args.gradient_accumulation_steps, 1),
            "pairs_drafted": drafted,
            "pairs_kept": kept,
            "pairs_dropped": dropped,
            "rewrite_closer": closer,
            "readiness": self.readiness() if self.readiness is not None else None,
        }
        if state.is_world_process_zero:
            for line in self.lines(args):
                logger.warning(line)

    def lines(self, args: TrainingArguments) -> list[str]:
        """The summary as said at the end of training."""
        figures = self.figures
        drafted, kept = figures["pairs_drafted"], figures["pairs_kept"]
        lines = [f"SGPO run: {figures['step1_steps']} improver (Step 1) steps, {figures['dpo_steps']} DPO steps."]
        if drafted:
            why = ", ".join(f"{count} {reason}" for reason, count in figures["pairs_dropped"].items()) or "none"
            lines.append(f"DPO pairs: {kept} kept of {drafted} drafted ({100 * kept / drafted:.0f}%); dropped: {why}.")
        if figures["rewrite_closer"] is not None:
            lines.append(
                f"Health: {100 * figures['rewrite_closer']:.0f}% of the improver's rewrites that changed their draft "
                "were closer to the reference than it (sgpo/rewrite_closer)."
            )
        readiness = figures["readiness"]
        if readiness is not None:
            level, ready = readiness
            verdict = "ready" if ready else "NOT ready"
            lines.append(f"Improver readiness: {100 * level:.0f}% at its last measurement, {verdict}.")
        if drafted and kept < FEW_PAIRS_BELOW * drafted:
            lines.append(
                f"WARNING: only {kept} of {drafted} DPO pairs were kept: the policy learned little. Raise "
                "max_new_tokens / improver_max_new_tokens if pairs were 'truncated'; 'identical' rewrites kept their "
                "draft (right drafts are kept by design with improver_target='keep_plausible': more prompts, or "
                "prompts the model gets wrong, make more pairs; a longer Step 1 if the drafts were wrong); loosen "
                "pair_gate if they were 'gated'."
            )
        if figures["dpo_steps"] and figures["dpo_steps"] < REWRITE_HEALTH_WINDOW:
            lines.append(
                f"WARNING: {figures['dpo_steps']} DPO steps: too few for the health check (it judges the first "
                f"{REWRITE_HEALTH_WINDOW}, warning below {100 * REWRITE_CLOSER_WARNING_BELOW:.0f}% closer)."
            )
        return lines
