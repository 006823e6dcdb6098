"""The alternation of SGPO's two phases, as a `TrainerCallback` the trainer asks before each step; and the sample
tables of ``log_completions`` (`sample_rows`, `SGPOSampleTableCallback`).

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

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState
from transformers.utils import logging

from .pairs import Completion, uses_improver
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
        self.schedule = self.run_schedule = self.configured_schedule.for_run(state.max_steps)
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
            "args": {**asdict(self.run_schedule), "skip_improver": self.skip_improver},
            "attributes": {
                "phase_runs": [list(run) for run in self.phase_runs],
                "warmup_ended_at": self.warmup_ended_at,
            },
        }


def last_turns(prompt: str | list[dict], turns: int = 3) -> str:
    """A prompt as a sample table shows it: the text, or its last ``turns`` messages as ``role: content``."""
    if isinstance(prompt, str):
        return prompt
    shown = "\n".join(f"{message['role']}: {message['content']}" for message in prompt[-turns:])
    hidden = len(prompt) - turns
    return f"({hidden} earlier message{'s' if hidden > 1 else ''})\n{shown}" if hidden > 0 else shown


def sample_rows(
    phase: str,
    prompts: list,
    drafts: list[Completion],
    improved: list[Completion],
    verdicts: list[str],
    decode: Callable[..., str],
    num_rows: int,
    references: list[str] | None = None,
) -> list[dict[str, str]]:
    """The rows a sample table shows for one step: the first ``num_rows``, kept pairs (or targets) first, in batch
    order (the rows where the improver changed the draft are the ones worth reading), decoded with ``decode``."""
    rows = sorted(range(len(prompts)), key=lambda i: verdicts[i] != "kept")[:num_rows]
    return [
        {
            "phase": phase,
            "prompt": last_turns(prompts[i]),
            "response": decode(drafts[i].token_ids, skip_special_tokens=True),
            "improved": decode(improved[i].token_ids, skip_special_tokens=True),
            "reference": references[i] if references is not None else "",
            "kept": verdicts[i],
        }
        for i in rows
    ]


class SGPOSampleTableCallback(TrainerCallback):
    """Show a sample of the last step's rows: prompt, policy response, improved response, reference, kept?

    `SGPOTrainer` adds one when ``log_completions=True`` (TRL's option, as in GRPO): the rows of the step just logged
    are printed with `rich` every ``logging_steps`` steps, at most ``num_completions_to_print`` of them (all if
    unset), and logged as a table named ``completions`` to Weights & Biases and to trackio where ``report_to``
    names them. A conversational prompt shows its last turns. In DPO steps "improved" is the improver's rewrite (or
    the reference with ``pair_source="spin"``) and "kept" says whether the pair survived the filter (or why it was
    dropped); in improver steps it is the training target and whether the outlier filter kept it. Kept rows come
    first.

    Args:
        trainer (`SGPOTrainer`): the trainer whose samples to show.
        every_n_steps (`int`, *optional*): show them every N optimizer steps instead of at each log.
        num_rows (`int`, *optional*): how many rows (all rows of the step if unset).
    """

    COLUMNS = ("prompt", "response", "improved", "reference", "kept")
    TITLES = ("prompt (last turns)", "policy response", "improved response", "reference", "kept")

    def __init__(self, trainer: Any, every_n_steps: int | None = None, num_rows: int | None = None):
        self.trainer = trainer
        self.every_n_steps = every_n_steps
        trainer.num_sample_rows = num_rows if num_rows is not None else sys.maxsize
        self.tables_shown = 0

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.every_n_steps and state.global_step % self.every_n_steps == 0:
            self._show(args, state)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs):
        if not self.every_n_steps and logs and "loss" in logs:  # a training log, not the end-of-run summary
            self._show(args, state)

    def _show(self, args: TrainingArguments, state: TrainerState) -> None:
        samples = self.trainer.last_samples
        if not state.is_world_process_zero or not samples:
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"SGPO samples, step {state.global_step} ({samples[0]['phase']} phase)", show_lines=True)
        for title in self.TITLES:
            table.add_column(title, overflow="fold")
        for row in samples:
            table.add_row(*(row[column] for column in self.COLUMNS))
        Console().print(table)
        self.tables_shown += 1
        self._log_to_trackers(args, samples, state.global_step)

    @classmethod
    def _log_to_trackers(cls, args: TrainingArguments, samples: list[dict], step: int) -> None:
        """TRL's convention: a ``completions`` table, to wandb (a run is active) and trackio (where installed)."""
        report_to = args.report_to or []
        backends = []
        if "wandb" in report_to:
            import wandb

            if wandb.run is not None:
                backends.append(wandb)
        if "trackio" in report_to and importlib.util.find_spec("trackio") is not None:
            import trackio

            backends.append(trackio)
        if not backends:
            return
        import pandas as pd

        frame = pd.DataFrame(
            [{"step": step, "phase": row["phase"], **{c: row[c] for c in cls.COLUMNS}} for row in samples]
        )
        for backend in backends:
            backend.log({"completions": backend.Table(dataframe=frame)})
