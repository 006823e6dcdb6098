"""SGPO's phase schedule: which phase, improver or DPO, each optimizer step belongs to (plain Python, no trainer).

The schedule is the paper's Step 1, a warm-up of ``improver_warmup_steps`` improver steps (below 1: that fraction of
the run's steps, like ``warmup_steps`` in transformers), then cycles of ``improver_steps`` improver steps followed by
``dpo_steps`` DPO steps, optionally limited to ``num_cycles`` cycles (DPO steps only afterwards). The phase of a step
is a pure function of the global step, so a resumed run continues in the right phase. `SGPOConfig` validates its
fields by building a `PhaseSchedule`, so the rules live here only.
"""

import math
from dataclasses import dataclass, replace


IMPROVER = "improver"
DPO = "dpo"
PHASE_IDS = {IMPROVER: 0, DPO: 1}  # logged as `sgpo/phase`, trackers want numbers
# Where Step 1's drafts come from: fresh samples of the current model each step, or the initial policy's, sampled
# once before Step 1 (`run.initial_drafts`).
WARMUP_DRAFT_SOURCES = ("fresh", "initial")


def resolve_warmup_steps(improver_warmup_steps: float, max_steps: int) -> int:
    """Steps of the warm-up improver phase: ``improver_warmup_steps`` itself, or below 1 that fraction of ``max_steps``
    (rounded up, so any positive fraction gives at least one step)."""
    if 0 < improver_warmup_steps < 1:
        return math.ceil(improver_warmup_steps * max_steps)
    return int(improver_warmup_steps)


@dataclass(frozen=True)
class PhaseSchedule:
    """Which phase each optimizer step (0-based global step) belongs to.

    A fractional ``improver_warmup_steps`` is resolved against the run's length with `for_run`; until then it counts
    as one step.
    """

    improver_warmup_steps: float = 0
    improver_steps: int = 1
    dpo_steps: int = 1
    num_cycles: int | None = None

    def __post_init__(self):
        for name in ("improver_warmup_steps", "improver_steps", "dpo_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        warmup = self.improver_warmup_steps
        if warmup >= 1 and warmup != int(warmup):
            raise ValueError(
                "improver_warmup_steps must be a whole number of steps, or a fraction of the run below 1, got "
                f"{warmup}."
            )
        if self.num_cycles is not None and self.num_cycles < 0:
            raise ValueError(f"num_cycles must be >= 0 or unset (no limit), got {self.num_cycles}.")
        if warmup + self.improver_steps + self.dpo_steps == 0:
            raise ValueError(
                "The schedule has zero steps in every phase: set improver_steps and/or dpo_steps to at least 1 "
                "(e.g. improver_steps=1 dpo_steps=1 alternates every step)."
            )

    def for_run(self, max_steps: int) -> "PhaseSchedule":
        """The same schedule with a fractional warm-up turned into steps of a run of ``max_steps``."""
        return replace(self, improver_warmup_steps=resolve_warmup_steps(self.improver_warmup_steps, max_steps))

    def phase_at(self, step: int) -> str:
        warmup = math.ceil(self.improver_warmup_steps)
        if step < warmup:
            return IMPROVER
        step -= warmup
        cycle_length = self.improver_steps + self.dpo_steps
        if cycle_length == 0 or (self.num_cycles is not None and step >= self.num_cycles * cycle_length):
            return DPO
        return IMPROVER if step % cycle_length < self.improver_steps else DPO

    def phases(self, num_steps: int) -> list[str]:
        return [self.phase_at(step) for step in range(num_steps)]
