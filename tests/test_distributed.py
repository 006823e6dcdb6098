"""Two CPU processes (torchrun, gloo) give the same run as one process with the same global batch.

What is compared, and why it holds on any machine: both runs train in float64 with plain SGD (no clipping) and
greedy sampling, so the only thing that differs between them is the order of floating-point sums: two half-batch
gradients averaged by the all-reduce against one sum over the whole batch, and padding to a different width.
Reassociating a sum of n terms changes it by at most (n - 1) * u * sum(|x_i|) (Higham, *Accuracy and Stability of
Numerical Algorithms*, 2nd ed., section 4.2), u = 2**-53 ~ 1.1e-16 in float64; the longest sums of this model (a
weight gradient over 4 rows x ~30 positions x 64 features, ~1e4 terms) stay below 1e-12 relative, and measured runs
differ by 1e-14 to 1e-13. ``RTOL = 1e-9`` sits three orders above that bound and eight below what a real defect does:
summing instead of averaging over processes doubles every gradient (relative difference 1), a dropped row changes
the batch mean by about 1/8. In float32 with Adam (the test before) neither holds: Adam moves an element whose gradient
is near zero by about the learning rate whatever its rounding, and Llama's float32 rotary angles depend on the
padding (see ``Float64RotaryEmbedding`` in distributed_run.py).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


SCRIPT = Path(__file__).with_name("distributed_run.py")
RTOL = 1e-9


def _run(command: list[str], output_dir: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "CUDA_VISIBLE_DEVICES": ""}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    summary = json.loads((output_dir / "summary.json").read_text())
    summary["weights"] = torch.load(output_dir / "weights.pt")
    summary["gradients"] = torch.load(output_dir / "gradients.pt")
    return summary


def _assert_tensors_close(actual: dict, expected: dict, what: str) -> None:
    """Each tensor within ``RTOL`` of the expected one, in relative norm (an element's own rounding can cancel)."""
    assert actual.keys() == expected.keys()
    floor = RTOL * 1e-3 * torch.stack([t.norm() for t in expected.values()]).norm()  # tensors whose norm is ~0
    for name, value in expected.items():
        difference = (actual[name] - value).norm()
        assert difference <= RTOL * value.norm() + floor, f"{what}, {name}: relative {difference / value.norm():.2e}"


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
    assert any(log.get("sgpo/pairs_kept", 0) > 0 for log in single["logs"])
    assert single["weights"]["initial"]["model.norm.weight"].dtype == torch.float64
    for one, two in zip(single["logs"], double["logs"], strict=True):
        numbers = {key for key, value in one.items() if isinstance(value, float | int)}
        assert numbers == {key for key, value in two.items() if isinstance(value, float | int)}, one["step"]
        for key in numbers - {"train_runtime", "train_samples_per_second", "train_steps_per_second"}:
            assert two[key] == pytest.approx(one[key], rel=RTOL, abs=1e-12), (one["step"], key)
    # What the optimizer sees at every step: the gradient of the same global batch, after the all-reduce.
    assert len(single["gradients"]) == len(double["gradients"]) == 4
    for step, (one, two) in enumerate(zip(single["gradients"], double["gradients"]), start=1):
        _assert_tensors_close(two, one, f"gradient of step {step}")
    _assert_tensors_close(double["weights"]["initial"], single["weights"]["initial"], "initial weights")
    updates = [
        {n: w["final"][n] - w["initial"][n] for n in w["final"]} for w in (single["weights"], double["weights"])
    ]
    _assert_tensors_close(updates[1], updates[0], "weight update over the run")
