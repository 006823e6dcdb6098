"""The alternation of SGPO's two phases, as a `TrainerCallback` the trainer asks before each step.

One `train()` call alternates *improver* steps (supervised updates of the improver role) and *DPO* steps (preference
updates of the policy on self-generated pairs). The schedule is the paper's Step 1, a warm-up of improver steps
(``improver_warmup_steps``; below 1, a fraction of the run's steps), then cycles of ``improver_steps`` improver steps
followed by ``dpo_steps`` DPO steps, optionally limited to ``num_cycles`` cycles (DPO steps only afterwards).
``improver_steps=1, dpo_steps=1`` alternates every optimizer step.

Why interleave rather than run the phases in long blocks: on a 0.9M-parameter model, 50 improver-only steps after SFT
took the policy's exact match from 45% to 15% (role interference), and DPO steps with no improver loss let the
improver drift to long outputs with no EOS. Short cycles, and the improver loss mixed into DPO steps
(``improver_loss_weight``), avoided both.

The phase of a step is a pure function of the global step, so a resumed run continues in the right phase; the
callback also saves the phases already run (run-length encoded) in the checkpoint's trainer state.
"""

from dataclasses import asdict
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState
from transformers.utils import logging

from .pairs import uses_improver
from .schedule import DPO, PhaseSchedule


logger = logging.get_logger(__name__)


class SGPOPhaseCallback(TrainerCallback, ExportableState):
    """Decides the phase of every optimizer step; `SGPOTrainer` reads `phase` and `phase_started` in each step.

    Args:
        improver_warmup_steps, improver_steps, dpo_steps, num_cycles: the `PhaseSchedule`; a warm-up below 1 is a
            fraction of the run's steps, resolved when training begins.
        skip_improver (`bool`): run DPO steps only (the `spin` and `edit` pair sources have no improver role).
    """

    def __init__(
        self,
        improver_warmup_steps: float = 0,
        improver_steps: int = 1,
        dpo_steps: int = 1,
        num_cycles: int | None = None,
        skip_improver: bool = False,
    ):
        self.skip_improver = skip_improver
        # As configured; `schedule` is this resolved for the run's length when training begins.
        self.configured_schedule = PhaseSchedule(improver_warmup_steps, improver_steps, dpo_steps, num_cycles)
        self.schedule = self.configured_schedule
        self.phase_runs: list[list] = []  # [[phase, number of steps], ...] of the completed steps
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
        )

    def phase_at(self, step: int) -> str:
        return DPO if self.skip_improver else self.schedule.phase_at(step)

    @property
    def phase_history(self) -> list[str]:
        """The phase of every completed optimizer step, in order."""
        return [phase for phase, count in self.phase_runs for _ in range(count)]

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.schedule = self.configured_schedule.for_run(state.max_steps)
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
            "args": {**asdict(self.schedule), "skip_improver": self.skip_improver},
            "attributes": {"phase_runs": [list(run) for run in self.phase_runs]},
        }


class SGPOSampleTableCallback(TrainerCallback):
    """Every ``every_n_steps`` steps, show a few (prompt, policy response, improved response, kept?) rows.

    The table is printed with `rich` on the main process and, where a tracker supports tables (Weights & Biases),
    logged as ``sgpo/samples``. In DPO steps "improved" is the improver's rewrite (or the reference with
    ``pair_source="spin"``) and "kept" says whether the pair survived the filter (or why it was dropped); in improver
    steps it is the training target and whether the outlier filter kept it.

    Args:
        trainer (`SGPOTrainer`): the trainer whose samples to show.
        every_n_steps (`int`): how often to show them.
        num_rows (`int`): how many rows.
    """

    def __init__(self, trainer: Any, every_n_steps: int = 10, num_rows: int = 4):
        self.trainer = trainer
        self.every_n_steps = every_n_steps
        trainer.num_sample_rows = num_rows
        self.tables_shown = 0

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        samples = self.trainer.last_samples
        if not state.is_world_process_zero or not samples or state.global_step % self.every_n_steps:
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"SGPO samples, step {state.global_step} ({samples[0]['phase']} phase)", show_lines=True)
        for column in ("prompt", "policy response", "improved response", "kept"):
            table.add_column(column, overflow="fold")
        for row in samples:
            table.add_row(row["prompt"], row["response"], row["improved"], row["kept"])
        Console().print(table)
        self.tables_shown += 1
        self._log_to_trackers(args, samples, state.global_step)

    @staticmethod
    def _log_to_trackers(args: TrainingArguments, samples: list[dict], step: int) -> None:
        if "wandb" not in (args.report_to or []):
            return
        import wandb

        if wandb.run is not None:
            columns = ["phase", "prompt", "response", "improved", "kept"]
            table = wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in samples])
            wandb.log({"sgpo/samples": table}, step=step)
