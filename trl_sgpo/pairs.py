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
from typing import Any


PAIR_SOURCES = ("sgpo", "spin", "edit")
# Why a pair is dropped, in order of precedence (logged as sgpo/pairs_<reason>).
DROP_REASONS = ("identical", "empty", "truncated")


def uses_improver(pair_source: str) -> bool:
    """Whether a pair source takes its chosen side from the improver role (so the run trains that role)."""
    return pair_source == "sgpo"


def reference_text(completion: str | list[dict[str, Any]]) -> str:
    """The text of an SFT reference: the string itself, or the content of its assistant message(s)."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion)


@dataclass
class Completion:
    """A sampled (or reference) completion: its content tokens (no EOS, no padding) and whether it ended with EOS.

    ``end_token`` is the EOS id that was sampled (a model may have several, e.g. Qwen's ``<|im_end|>`` and
    ``<|endoftext|>``); unset for references and targets. A finished completion is *scored* as its content followed by
    the chat template's end-of-turn token (`scored_tokens`), whichever EOS was sampled: every row then reads as the
    template renders the conversation, in the policy's passes and inside the improver's next turn alike.
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

    def scored_tokens(self, end_of_turn: int) -> list[int]:
        """The tokens a completion is scored on: its content, then ``end_of_turn`` if it ended (the template's
        end-of-turn token, see `improver.end_of_turn_token`). A cut completion has no end token."""
        if not self.ended:
            return list(self.token_ids)
        return [*self.token_ids, end_of_turn]

    def ended_off_turn(self, end_of_turn: int) -> bool:
        """Whether it ended on an EOS id other than the end-of-turn token (then its generated tokens, and the KV
        cache built on them, differ from the conversation as the template renders it)."""
        return self.ended and self.end_token is not None and self.end_token != end_of_turn


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
