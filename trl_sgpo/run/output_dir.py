"""Refuse to write a run into a directory that already holds another run's files, and to resume from nothing."""

import os
import re


CHECKPOINT = re.compile(r"^checkpoint-\d+$")


def _checkpoints(output_dir: str) -> list[str]:
    if not os.path.isdir(output_dir):
        return []
    return [entry for entry in os.listdir(output_dir) if CHECKPOINT.match(entry)]


def check_output_dir(output_dir: str, resume_from_checkpoint: str | bool | None, overwrite: bool) -> None:
    """Raise `FileExistsError` if ``output_dir`` is non-empty and the run neither resumes nor may overwrite, and
    `FileNotFoundError` if the run resumes from a checkpoint that does not exist.

    A new run writes `checkpoint-N` folders, weights and a model card into the directory; over an earlier run's
    files this would silently mix or replace them. Resuming is offered only where there is a checkpoint to resume.
    """
    if resume_from_checkpoint is True and not _checkpoints(output_dir):
        raise FileNotFoundError(
            f"resume_from_checkpoint=True, and output_dir {output_dir!r} holds no checkpoint-N folder to resume from "
            "(a run saves them with save_strategy 'steps' or 'epoch'). Drop --resume_from_checkpoint to start a new "
            "run, or point it at a checkpoint folder."
        )
    if isinstance(resume_from_checkpoint, str) and not os.path.isdir(resume_from_checkpoint):
        raise FileNotFoundError(
            f"resume_from_checkpoint {resume_from_checkpoint!r} is not a folder (looked for it from "
            f"{os.getcwd()!r}): pass a checkpoint-N folder of an earlier run, or true for the latest in output_dir."
        )
    if overwrite or resume_from_checkpoint or not os.path.isdir(output_dir):
        return
    entries = sorted(entry for entry in os.listdir(output_dir) if not entry.startswith("."))
    if entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        resume = (
            "resume the run in it (`trainer.train(resume_from_checkpoint=True)` / `--resume_from_checkpoint true`), "
            if _checkpoints(output_dir)
            else ""
        )
        raise FileExistsError(
            f"output_dir {output_dir!r} is not empty ({shown}). Choose a new output_dir, {resume}or pass "
            "`overwrite_output_dir=True` / `--overwrite_output_dir` to write over it."
        )
