"""The phases of SGPO's steps, as a `TrainerCallback` the trainer asks before each step.

One `train()` call runs *improver* steps (supervised updates of the improver role) and *DPO* steps (preference
updates of the policy on self-generated pairs). The schedule (`method.schedule.PhaseSchedule`) is the paper's Step 1,
a warm-up of improver steps (``improver_warmup_steps``; below 1, a fraction of the run's steps), then cycles of
``improver_steps`` improver steps followed by ``dpo_steps`` DPO steps, optionally limited to ``num_cycles`` cycles
(DPO steps only afterwards). With the default ``improver_steps=0`` every step after Step 1 is a DPO step, whose
``improver_loss_weight`` term keeps the improver trained.

The phase of a step is a pure function of the global step, so a resumed run continues in the right phase; the
callback also saves the phases already run (run-length encoded) in the checkpoint's trainer state.
"""

from dataclasses import asdict, replace

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState
from transformers.utils import logging

from ..method.pairs import uses_improver
from ..method.schedule import DPO, PhaseSchedule


logger = logging.get_logger(__name__)


class SGPOPhaseCallback(TrainerCallback, ExportableState):
    """Decides the phase of every optimizer step; `SGPOTrainer` reads `phase` and `phase_started` in each step.

    Args:
        improver_warmup_steps, improver_steps, dpo_steps, num_cycles: the `PhaseSchedule`; a warm-up below 1 is a
            fraction of the run's steps, resolved when training begins.
        skip_improver (`bool`): run DPO steps only (the `spin`, `edit` and `self_sharpen` pair sources have no
            improver role).
        warmup_only (`bool`): every step of the run is a Step 1 step (`improver_warmup_only`).
    """

    def __init__(
        self,
        improver_warmup_steps: float = 0,
        improver_steps: int = 1,
        dpo_steps: int = 1,
        num_cycles: int | None = None,
        skip_improver: bool = False,
        warmup_only: bool = False,
    ):
        self.skip_improver = skip_improver
        self.warmup_only = warmup_only
        # As configured; `schedule` is this resolved for the run's length when training begins.
        self.configured_schedule = PhaseSchedule(improver_warmup_steps, improver_steps, dpo_steps, num_cycles)
        self.schedule = self.run_schedule = self.configured_schedule
        self.phase_runs: list[list] = []  # [[phase, number of steps], ...] of the completed steps
        self.warmup_ended_at: int | None = None  # where `ImproverReadiness` ended Step 1 early, if it did
        self.phase = self.phase_at(0)
        self.phase_started = True

    @classmethod
    def from_args(cls, args: TrainingArguments) -> "SGPOPhaseCallback":
        return cls(
            improver_warmup_steps=args.improver_warmup_steps,
            improver_steps=args.improver_steps,
            dpo_steps=args.dpo_steps,
            num_cycles=args.num_cycles,
            skip_improver=not uses_improver(args.pair_source),
            warmup_only=args.improver_warmup_only,
        )

    def phase_at(self, step: int) -> str:
        return DPO if self.skip_improver else self.schedule.phase_at(step)

    @property
    def warmup_cap(self) -> int:
        """Step 1's length as configured, resolved for the run: its cap when readiness may end it earlier."""
        return int(self.run_schedule.improver_warmup_steps)

    def end_warmup_at(self, step: int) -> None:
        """End Step 1 after ``step`` steps (the improver is ready): the schedule goes on as if it had been that long.
        Saved in the checkpoint, so a resumed run keeps it."""
        self.warmup_ended_at = step
        self.schedule = replace(self.run_schedule, improver_warmup_steps=step)

    @property
    def phase_history(self) -> list[str]:
        """The phase of every completed optimizer step, in order."""
        return [phase for phase, count in self.phase_runs for _ in range(count)]

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        schedule = self.configured_schedule
        if self.warmup_only:  # the whole run is Step 1
            schedule = replace(schedule, improver_warmup_steps=state.max_steps)
        self.schedule = self.run_schedule = schedule.for_run(state.max_steps)
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if state.global_step > 0 and isinstance(saved, dict):  # resuming: take back the phases already run
            if saved.get("args") != self.state()["args"]:
                logger.warning(
                    "Resuming with a different SGPO schedule than the checkpoint's (%s vs %s): the phases continue "
                    "from the new schedule at step %d.",
                    self.state()["args"],
                    saved.get("args"),
                    state.global_step,
                )
            self.phase_runs = [list(run) for run in saved.get("attributes", {}).get("phase_runs", [])]
            if saved.get("attributes", {}).get("warmup_ended_at") is not None:
                self.end_warmup_at(saved["attributes"]["warmup_ended_at"])
        self._set_phase(state.global_step)

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._set_phase(state.global_step)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.phase_runs and self.phase_runs[-1][0] == self.phase:
            self.phase_runs[-1][1] += 1
        else:
            self.phase_runs.append([self.phase, 1])

    def _set_phase(self, step: int) -> None:
        self.phase = self.phase_at(step)
        self.phase_started = step == 0 or self.phase_at(step - 1) != self.phase

    def state(self) -> dict:
        return {
            "args": {
                **asdict(self.run_schedule),
                "skip_improver": self.skip_improver,
                "warmup_only": self.warmup_only,
            },
            "attributes": {
                "phase_runs": [list(run) for run in self.phase_runs],
                "warmup_ended_at": self.warmup_ended_at,
            },
        }
