"""FSDP2 (torch's `fully_shard`) on 2 CPU processes: every scoring path gives the whole model's numbers.

accelerate starts FSDP only on accelerators, so the trainer cannot train under FSDP2 here; the scoring it relies on
can be checked directly. `tests/fsdp2_run.py` scores one step's rows (drafts that ended and drafts cut, next-turn
format) with `Scorer.improver_scores`, packed and through separate passes, selective logits on, with the model whole
and sharded over 2 gloo processes, and back-propagates through both. Every forward goes through the model's own
``forward`` (FSDP2 gathers the weights there); a score read from a parameter outside it would see a shard.

Tolerance: the sharded pass gathers the same weights and runs the same kernels, and both ranks score the same rows,
so the reduce-scatter averages two equal gradients; measured differences are exactly 0. Allowed: the float32
reassociation bound of tests/helpers.py, relative to the largest score and gradient, in case a machine's kernels
take another path for the gathered tensors' layout.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import FLOAT32_REASSOCIATION_RTOL


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)
def test_scoring_under_fully_shard_matches_the_whole_model(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29611"]
    # `-m tests.fsdp2_run`: run as a module of the tests package (from the repository root), so it imports its helpers
    completed = subprocess.run(
        [*command, "-m", "tests.fsdp2_run", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["world_size"] == 2 and result["sharded_class"].startswith("FSDP")
        packed, separate = result["packed"], result["separate"]
        assert packed["used_packing"] and not separate["used_packing"]  # both paths ran
        assert packed["selective_logits"] and separate["selective_logits"]
        assert set(packed["scored_fields"]) == {"target", "rejected", "chosen", "reference"}
        for path in (packed, separate):
            assert all(value <= FLOAT32_REASSOCIATION_RTOL * path["score_scale"] for value in path["scores"].values())
            assert path["gradients"] <= FLOAT32_REASSOCIATION_RTOL * path["gradient_scale"], path
