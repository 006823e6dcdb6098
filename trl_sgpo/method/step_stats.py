"""A step's statistics and the reward-free health signal, with no model: what the trainer logs and warns about.

`StepStats` collects one micro-step's values (sums and counts, so that processes reduce them in one collective);
`reduce_stats` turns them into the step's means over all processes; `pair_stats` / `target_stats` describe the
pairs and improver targets of a step; `RewriteHealth` warns once when the improver's rewrites are rarely closer to
the SFT reference than the drafts they rewrite.
"""

import math
from collections.abc import Sequence

import torch
from transformers.utils import logging

from ..records import Completion, StepRecord
from .improver import edit_distance
from .pairs import DROP_REASONS, PairFilterResult
from .schedule import DPO


# The health warning: judged over the first DPO steps, raised once when fewer rewrites than this beat their draft.
REWRITE_HEALTH_WINDOW = 5
REWRITE_CLOSER_WARNING_BELOW = 0.2

logger = logging.get_logger(__name__)


class StepStats:
    """Per-step sums and counts of named values, reduced over processes in one collective by `reduce_stats`."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}
        self.modes: dict[str, str] = {}

    def add(self, name: str, values: Sequence[float], reduce: str = "mean") -> None:
        """Add values to ``name``. ``mean``: logged as the mean over all values of all processes; ``sum``: as the
        total over processes. Adding to a name twice in a step pools the values."""
        if self.modes.setdefault(name, reduce) != reduce:
            raise ValueError(f"statistic {name!r} is reduced by {self.modes[name]!r}, not {reduce!r}")
        self.sums[name] = self.sums.get(name, 0.0) + float(sum(values))
        self.counts[name] = self.counts.get(name, 0.0) + float(len(values))

    def update(self, values: dict[str, Sequence[float]]) -> None:
        """`add` each (name, values) of a dict, as means."""
        for name, value in values.items():
            self.add(name, value)


def reduce_stats(stats: StepStats, accelerator) -> dict[str, float]:
    """The step's value of each statistic over all processes (one collective): NaN for a mean no process had a
    value for (no pair kept), so that the key stays on the log line."""
    names = list(stats.sums)
    totals = torch.tensor(
        [[stats.sums[name], stats.counts[name]] for name in names], dtype=torch.float64, device=accelerator.device
    )
    if accelerator.num_processes > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    reduced = {}
    for name, (total, count) in zip(names, totals.tolist()):
        reduced[name] = total if stats.modes[name] == "sum" else total / count if count > 0 else math.nan
    return reduced


def nan_mean(values: list[float]) -> float:
    """The mean of the values that are not NaN; NaN if there is none (a logging window where no step had one)."""
    valid = [value for value in values if not math.isnan(value)]
    return sum(valid) / len(valid) if valid else math.nan


def completion_stats(prefix: str, completions: Sequence[Completion]) -> dict[str, list[float]]:
    """Lengths and EOS rates of a step's drafts (``prefix`` ``"draft"``) or rewrites (``"improver"``)."""
    ended = [float(c.ended) for c in completions]
    lengths = [len(c.token_ids) for c in completions]
    if prefix == "draft":
        return {"sgpo/response_length": lengths, "sgpo/eos_rate": ended, "val/contain_eos_token": ended}
    return {"sgpo/improved_length": lengths, "sgpo/improver_eos_rate": ended}


def pair_stats(
    stats: StepStats,
    chosen: Sequence[Completion],
    drafts: Sequence[Completion],
    references: Sequence[Completion],
    pairs: PairFilterResult,
) -> None:
    """The DPO pairs: kept and dropped (by reason), their edit distance, and the health signal without a reward:
    of the chosen sides that changed the draft, the share closer to the SFT reference (``sgpo/rewrite_closer``).

    A rewrite equal to its draft is left out: it makes no pair, and an improver trained to keep right drafts (the
    default ``improver_target="keep_plausible"``) is right to leave them; counting it as "not closer" would read a
    good improver on a mostly right policy as an unready one. NaN in a step where no rewrite changed its draft."""
    stats.add("sgpo/pairs_kept", [float(k) for k in pairs.keep])
    for reason in DROP_REASONS:
        stats.add(f"sgpo/pairs_{reason}", [float(r == reason) for r in pairs.reasons])
    stats.add("sgpo/edit_distance", [edit_distance(c.token_ids, d.token_ids) for c, d in zip(chosen, drafts)])
    stats.add("sgpo/empty_batches", [float(pairs.num_kept == 0)], reduce="sum")
    closer = [
        float(edit_distance(c.token_ids, r.token_ids) < edit_distance(d.token_ids, r.token_ids))
        for c, d, r in zip(chosen, drafts, references)
        if list(c.token_ids) != list(d.token_ids)
    ]
    stats.add("sgpo/rewrite_closer", closer)


def target_stats(stats: StepStats, sizes: Sequence[float], keep: Sequence[bool]) -> None:
    """The improver's targets: the share kept by the filter, and the edit size of those kept."""
    stats.add("sgpo/targets_kept", [float(k) for k in keep])
    stats.add("sgpo/target_edit_distance", [size for size, kept in zip(sizes, keep) if kept])


class RewriteHealth:
    """Warns once when the improver's rewrites are rarely closer to the references than the drafts they rewrite.

    Judged over the first ``window`` DPO steps in which some rewrite changed its draft, from the step values of
    ``sgpo/rewrite_closer`` (reduced over processes, so every process decides alike): the improver is not ready, and
    its pairs teach the policy little or the wrong thing.
    """

    def __init__(self, window: int = REWRITE_HEALTH_WINDOW, warn_below: float = REWRITE_CLOSER_WARNING_BELOW):
        self.window, self.warn_below = window, warn_below
        self.history: list[float] = []
        self.checked = False

    def on_step_record(self, record: StepRecord) -> None:
        """Observe a step's record: DPO steps whose rewrites came from the improver (``sgpo/rewrite_closer``)."""
        if record.phase == DPO and "sgpo/rewrite_closer" in record.stats and record.rewrites is not None:
            self.observe(record.stats["sgpo/rewrite_closer"])

    def observe(self, closer: float) -> None:
        if self.checked or math.isnan(closer):  # NaN: no rewrite of the step changed its draft
            return
        self.history.append(closer)
        if len(self.history) < self.window:
            return
        self.checked = True
        share = sum(self.history) / len(self.history)
        if share < self.warn_below:
            logger.warning(
                "Over the first %d DPO steps only %.0f%% of the improver's rewrites that changed their draft were "
                "closer to the SFT reference than the draft (sgpo/rewrite_closer; below %.0f%%). The improver role "
                "is not ready: train Step 1 longer (improver_warmup_only, one pass over the data at its own "
                "improver_learning_rate), raise improver_loss_weight, or check improver_template. "
                "See docs/troubleshooting.md.",
                self.window,
                100 * share,
                100 * self.warn_below,
            )
