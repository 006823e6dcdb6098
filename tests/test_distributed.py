"""Two CPU processes (torchrun, gloo) give the same run as one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


SCRIPT = Path(__file__).with_name("distributed_run.py")


def _run(command: list[str], output_dir: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "CUDA_VISIBLE_DEVICES": ""}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    summary = json.loads((output_dir / "summary.json").read_text())
    summary["weights"] = torch.load(output_dir / "final_weights.pt")
    return summary


@pytest.mark.timeout(900)
def test_two_processes_match_one_process(tmp_path):
    single = _run([sys.executable, str(SCRIPT), str(tmp_path / "one"), "4"], tmp_path / "one")
    double = _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            str(SCRIPT),
            str(tmp_path / "two"),
            "2",
        ],
        tmp_path / "two",
    )
    assert (single["num_processes"], double["num_processes"]) == (1, 2)
    assert [log["sgpo/phase"] for log in double["logs"]] == [0.0, 1.0, 0.0, 1.0]
    for one, two in zip(single["logs"], double["logs"]):
        for key in ("loss", "grad_norm", "sgpo/improver_loss", "sgpo/response_length"):
            assert two[key] == pytest.approx(one[key], rel=1e-3, abs=1e-6), (one["step"], key)
    dpo_logs = [(one, two) for one, two in zip(single["logs"], double["logs"]) if one["sgpo/phase"] == 1.0]
    assert any("rewards/margins" in one for one, _ in dpo_logs)
    for one, two in dpo_logs:
        for key in ("sgpo/pairs_kept", "rewards/margins", "logps/chosen", "objective/kl"):
            if key in one:
                assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
    for name, weight in single["weights"].items():
        torch.testing.assert_close(double["weights"][name], weight, rtol=1e-4, atol=1e-6, msg=name)
