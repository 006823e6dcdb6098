"""Step 1 on the initial policy's drafts, sampled once up front (`SGPOConfig.improver_warmup_drafts="initial"`).

The paper's Figure 1 builds Step 1's data from the *initial* policy: each prompt's draft `y` is sampled before the
improver is trained, and the improver learns to rewrite those drafts toward the SFT references. With ``"initial"``
(the default), the first Step 1 step samples, before any update, drafts for a pool of training rows: as many as
Step 1 can use (its length, or its cap with `improver_ready_at`, times the rows of a step), at most the whole data
set. Step 1's steps then train on those drafts in turn, cycling when Step 1 outlasts the pool; no Step 1 step
generates. The pool is freed when Step 1 ends. ``"fresh"`` samples new drafts from the current model at every Step 1
step instead, as the DPO steps do.
"""

import time
from collections.abc import Callable
from typing import Any

import torch
from datasets import Dataset
from transformers.utils import logging

from ..records import DraftBatch
from ..step.drafts import DraftStage


logger = logging.get_logger(__name__)


def pool_rows(dataset: Any, rows_wanted: int, micro_batch: int, seed: int, process: int, processes: int) -> list:
    """This process's rows of the pool, as micro-batches (dicts of columns, as the data loader gives them).

    The pool is ``rows_wanted`` rows of a seeded shuffle of ``dataset`` (all of it when smaller), cut to whole
    micro-batches on every process, so that each process generates the same number of times (ZeRO-3 needs that);
    process ``p`` takes every ``processes``-th row from the ``p``-th on.
    """
    if isinstance(dataset, Dataset):
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
        rows = [dataset[index] for index in order[: min(rows_wanted, len(dataset))]]
    else:  # a stream: its first rows
        rows = []
        for row in dataset:
            if len(rows) == rows_wanted:
                break
            rows.append(row)
    per_step = micro_batch * processes
    mine = rows[: max(len(rows) // per_step, 1) * per_step][process::processes]
    if not mine:
        raise ValueError(f"improver_warmup_drafts='initial': {len(rows)} training rows for {processes} processes.")
    return [
        {column: [row[column] for row in mine[start : start + micro_batch]] for column in mine[0]}
        for start in range(0, len(mine), micro_batch)
    ]


class InitialDrafts:
    """The pool of Step 1's drafts, sampled once from the model as it was before Step 1's first update.

    The step's draft stage samples each micro-batch of the pool (the policy's role, sampled as in every step);
    `next_batch` hands the batches out in turn.

    Args:
        draft: the step's draft stage.
        dataset: the training data the pool's rows come from.
        args: the `SGPOConfig` (batch sizes, seed).
        process_index, num_processes: this process among the run's.
        current_step: the run's optimizer step now (a pool sampled after step 0 is said to be from resumed weights).
        warmup_cap: Step 1's length as resolved for the run (`SGPOPhaseCallback.warmup_cap`), now.
    """

    def __init__(
        self,
        draft: DraftStage,
        dataset: Any,
        args: Any,
        process_index: int,
        num_processes: int,
        current_step: Callable[[], int],
        warmup_cap: Callable[[], int],
    ):
        self.draft, self.dataset, self.args = draft, dataset, args
        self.process_index, self.num_processes = process_index, num_processes
        self.current_step, self.warmup_cap = current_step, warmup_cap
        self.batches: list[DraftBatch] | None = None
        self.served = 0

    def next_batch(self, model: torch.nn.Module) -> DraftBatch:
        """The next micro-batch of the pool (sampled on the first call), cycling."""
        if self.batches is None:
            self.batches = self._sample(model)
        batch = self.batches[self.served % len(self.batches)]
        self.served += 1
        return batch

    def _sample(self, model: torch.nn.Module) -> list[DraftBatch]:
        args = self.args
        if self.current_step() > 0:
            logger.warning(
                "improver_warmup_drafts='initial' on a run resumed inside Step 1 (step %d): the pool's drafts come "
                "from the resumed weights, not from the initial policy.",
                self.current_step(),
            )
        rows_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
        steps = self.warmup_cap()
        processes = self.num_processes
        inputs = pool_rows(
            self.dataset,
            steps * rows_per_step * processes,
            args.per_device_train_batch_size,
            args.seed,
            self.process_index,
            processes,
        )
        start = time.perf_counter()
        with torch.no_grad():
            batches = [self.draft(model, micro_batch) for micro_batch in inputs]
        drafts = sum(len(batch.drafts) for batch in batches) * processes
        logger.warning(
            "improver_warmup_drafts='initial': sampled %d drafts from the initial policy in %.1f s, for Step 1's up "
            "to %d steps (%d rows each); Step 1 trains on them without generating.",
            drafts,
            time.perf_counter() - start,
            steps,
            rows_per_step * processes,
        )
        return batches
