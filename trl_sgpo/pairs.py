"""Reward-free preference pairs and the degenerate-pair filter (plain Python, no model).

SGPO's pair is ``(chosen = improver(x, y), rejected = y)``: both sides come from the current model, and no reward
ranks them. Two other sources of the chosen side run in the same trainer, as baselines: ``spin`` (the SFT reference,
the SPIN baseline) and ``edit`` (the draft with a fraction ``improver_alpha`` of its token edits towards the
reference applied by arithmetic, no model involved: what the learned improver adds over a mechanical step).

A pair teaches nothing, or the wrong thing, when its sides are identical (zero gradient), when a
side is empty, or when a side was cut at the length limit (no EOS, so its log-probability scores an unfinished
text); such pairs are dropped and counted.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field


PAIR_SOURCES = ("sgpo", "spin", "edit")
# Why a pair is dropped, in order of precedence (logged as sgpo/pairs_<reason>).
DROP_REASONS = ("identical", "empty", "truncated")


def uses_improver(pair_source: str) -> bool:
    """Whether a pair source takes its chosen side from the improver role (so the run trains that role)."""
    return pair_source == "sgpo"


@dataclass
class Completion:
    """A sampled (or reference) completion: its content tokens (no EOS, no padding) and whether it ended with EOS.

    ``end_token`` is the EOS id that was sampled (a model may have several, e.g. end-of-turn and end-of-text), so
    log-probabilities score the token that was really generated; unset means the tokenizer's EOS.
    """

    token_ids: list[int]
    ended: bool
    end_token: int | None = None

    # The end-of-sequence rules, in one place: how a generated row becomes a completion, and what is scored of it.

    @classmethod
    def from_generated(cls, ids: Sequence[int], eos_token_ids: Sequence[int], stopped: bool = False) -> "Completion":
        """A generated row (up to its first EOS, no padding): the content, whether it ended (an EOS was sampled, or
        ``stopped``: the engine stopped at a stop token it left out of the ids), and the EOS that was sampled."""
        ends_with_eos = bool(ids) and ids[-1] in eos_token_ids
        content = list(ids[:-1]) if ends_with_eos else list(ids)
        return cls(content, ends_with_eos or stopped, ids[-1] if ends_with_eos else None)

    def scored_tokens(self, default_end: int) -> list[int]:
        """The tokens a completion is scored on: its content, then the EOS it ended on (``default_end`` where none
        was sampled: references, improver targets, a stop the engine left out). A cut completion has no EOS."""
        if not self.ended:
            return list(self.token_ids)
        return [*self.token_ids, self.end_token if self.end_token is not None else default_end]


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
