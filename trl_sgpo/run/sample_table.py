"""The sample tables of ``log_completions``: a few rows of the last step (prompt, draft, rewrite or target,
reference, verdict), printed with `rich` and logged to the trackers, read from the step's `StepRecord`."""

import importlib.util
import sys
from collections.abc import Callable

from transformers import PreTrainedTokenizerBase, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..records import Completion, StepRecord


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

    The rows come from each step's `StepRecord` (`SGPOTrainer` hands it to every callback with an `on_step_record`
    method). `SGPOTrainer` adds one when ``log_completions=True`` (TRL's option, as in GRPO): the rows of the step
    just logged are printed with `rich` every ``logging_steps`` steps, at most ``num_completions_to_print`` of them
    (all if unset), and logged as a table named ``completions`` to Weights & Biases and to trackio where
    ``report_to`` names them. A conversational prompt shows its last turns. In DPO steps "improved" is the
    improver's rewrite (or the reference with ``pair_source="spin"``) and "kept" says whether the pair survived the
    filter (or why it was dropped); in improver steps it is the training target and whether the outlier filter kept
    it. Kept rows come first.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): decodes the rows.
        every_n_steps (`int`, *optional*): show them every N optimizer steps instead of at each log.
        num_rows (`int`, *optional*): how many rows (all rows of the step if unset).
    """

    COLUMNS = ("prompt", "response", "improved", "reference", "kept")
    TITLES = ("prompt (last turns)", "policy response", "improved response", "reference", "kept")
    # In improver steps the third column is what the improver is trained to write, not a rewrite it generated.
    IMPROVER_TITLES = ("prompt (last turns)", "policy response", "improver target", "reference", "kept")

    @classmethod
    def titles(cls, phase: str) -> tuple[str, ...]:
        """The column titles of a ``phase`` step's table."""
        return cls.TITLES if phase == "dpo" else cls.IMPROVER_TITLES

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, every_n_steps: int | None = None, num_rows: int | None = None
    ):
        self.tokenizer = tokenizer
        self.every_n_steps = every_n_steps
        self.num_rows = num_rows if num_rows is not None else sys.maxsize
        self.tables_shown = 0
        self.last_record: StepRecord | None = None

    def on_step_record(self, record: StepRecord) -> None:
        """Keep the record of the step just taken (decoded only when shown, on the main process)."""
        self.last_record = record

    @property
    def last_samples(self) -> list[dict[str, str]]:
        """The rows the table shows for the last step (`sample_rows`)."""
        record = self.last_record
        if record is None:
            return []
        if record.phase == "dpo":
            improved, verdicts = record.chosen, record.pair_verdicts
        else:
            improved, verdicts = record.targets, ["kept" if kept else "filtered" for kept in record.target_kept]
        return sample_rows(
            record.phase,
            record.rows["prompt"],
            record.drafts,
            improved,
            verdicts,
            self.tokenizer.decode,
            self.num_rows,
            record.reference_texts,
        )

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.every_n_steps and state.global_step % self.every_n_steps == 0:
            self._show(args, state)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs):
        if not self.every_n_steps and logs and "loss" in logs:  # a training log, not the end-of-run summary
            self._show(args, state)

    def _show(self, args: TrainingArguments, state: TrainerState) -> None:
        if not state.is_world_process_zero:
            return
        samples = self.last_samples
        if not samples:
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"SGPO samples, step {state.global_step} ({samples[0]['phase']} phase)", show_lines=True)
        for title in self.titles(samples[0]["phase"]):
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
