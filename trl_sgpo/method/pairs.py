"""Reward-free preference pairs and the degenerate-pair filter (plain Python, no model).

SGPO's pair is ``(chosen = improver(x, y), rejected = y)``: both sides come from the current model, and no reward
ranks them. Other sources of the chosen side run in the same trainer, as baselines: ``spin`` (the SFT reference,
the SPIN baseline), ``edit`` (the draft with a fraction ``improver_alpha`` of its token edits towards the
reference applied by arithmetic, no model involved: what the learned improver adds over a mechanical step) and
``self_sharpen`` (the policy's own greedy answer: a control for what any sharpening toward the policy's mode gains).

A pair teaches nothing, or the wrong thing, when its sides are identical (zero gradient), when a
side is empty, or when a side was cut at the length limit (no EOS, so its log-probability scores an unfinished
text); such pairs are dropped and counted. A pair gate (`step.pair_gates`) may then drop pairs the model's own
evidence does not support (``gated``).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..records import Completion


PAIR_SOURCES = ("sgpo", "spin", "edit", "self_sharpen")
PAIR_GATES = ("none", "reference_margin", "improver_keep", "round_trip")
# Why a pair is dropped, in order of precedence (logged as sgpo/pairs_<reason>).
DROP_REASONS = ("identical", "empty", "truncated", "gated")


def uses_improver(pair_source: str) -> bool:
    """Whether a pair source takes its chosen side from the improver role (so the run trains that role)."""
    return pair_source == "sgpo"


@dataclass
class PairFilterResult:
    """Which pairs survive, and why the others were dropped (a pair counts under its first failing rule)."""

    keep: list[bool] = field(default_factory=list)
    reasons: list[str | None] = field(default_factory=list)  # None for a kept pair, else one of DROP_REASONS

    @property
    def num_kept(self) -> int:
        return sum(self.keep)


def filter_pairs(chosen: Sequence[Completion], rejected: Sequence[Completion]) -> PairFilterResult:
    """Drop pairs whose sides are identical, empty, or cut off (no EOS), in that order of precedence."""
    result = PairFilterResult()
    for good, bad in zip(chosen, rejected, strict=True):
        if good.token_ids == bad.token_ids:
            reason = "identical"
        elif not good.token_ids or not bad.token_ids:
            reason = "empty"
        elif not (good.ended and bad.ended):
            reason = "truncated"
        else:
            reason = None
        result.keep.append(reason is None)
        result.reasons.append(reason)
    return result


def gate_pairs(result: PairFilterResult, passes: Sequence[bool]) -> PairFilterResult:
    """The filter's result with the pairs it kept but the gate refused dropped as ``gated``."""
    reasons = [reason if reason is not None or passed else "gated" for reason, passed in zip(result.reasons, passes)]
    return PairFilterResult([reason is None for reason in reasons], reasons)
