"""Refuse to write a run into a directory that already holds another run's files."""

import os


def check_output_dir(output_dir: str, resume_from_checkpoint: str | bool | None, overwrite: bool) -> None:
    """Raise `FileExistsError` if ``output_dir`` is non-empty and the run neither resumes nor may overwrite.

    A new run writes `checkpoint-N` folders, weights and a model card into the directory; over an earlier run's
    files this would silently mix or replace them.
    """
    if overwrite or resume_from_checkpoint or not os.path.isdir(output_dir):
        return
    entries = sorted(entry for entry in os.listdir(output_dir) if not entry.startswith("."))
    if entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise FileExistsError(
            f"output_dir {output_dir!r} is not empty ({shown}). Choose a new output_dir, resume the run in it "
            "(`trainer.train(resume_from_checkpoint=True)` / `--resume_from_checkpoint true`), or pass "
            "`overwrite_output_dir=True` / `--overwrite_output_dir` to write over it."
        )
