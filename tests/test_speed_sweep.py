"""benchmarks/speed_sweep.py (benchmarks/speed/sweep.py): the figures of a point come from its arms' timings, bad
grids are refused, and ``--quick`` runs end to end (no timing assertions: speed targets live in the benchmark's
report)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.speed import sweep as speed_sweep


ROOT = Path(__file__).resolve().parents[1]


def _arm(step: float, generation: float, forward_backward: float, paired: tuple[float, float, float]) -> dict:
    """An arm's timing as speed.py summarises it (medians only matter here)."""
    medians = {"step": step, "generation": generation, "forward_backward": forward_backward}
    return {
        "summary": {name: {"median": value} for name, value in medians.items()},
        "fractions": {"generation": generation / step},
        "paired_ratio_vs_online_dpo": dict(zip(("q1", "median", "q3"), paired)),
        "paired_ratio_vs_online_dpo_rm": dict(zip(("q1", "median", "q3"), (p / 2 for p in paired))),
    }


def test_point_row_takes_sgpo_over_online_dpo_from_the_arms_timings():
    point = {
        "length": 32,
        "batch_size": 4,
        "timing": {
            "online_dpo": _arm(10.0, 4.0, 6.0, (1.0, 1.0, 1.0)),
            "online_dpo_rm": _arm(20.0, 4.0, 6.0, (2.0, 2.0, 2.0)),
            "sgpo_dpo": _arm(12.0, 6.0, 5.0, (1.1, 1.2, 1.3)),
        },
    }
    row = speed_sweep.point_row(point)
    assert (row["length"], row["batch_size"]) == (32, 4)
    assert row["sgpo_dpo_step_s"] == 12.0 and row["online_dpo_rm_step_s"] == 20.0
    assert (row["vs_online_dpo_q1"], row["vs_online_dpo"], row["vs_online_dpo_q3"]) == (1.1, 1.2, 1.3)
    assert row["vs_online_dpo_rm"] == pytest.approx(0.6)
    assert row["generation_ratio"] == pytest.approx(6.0 / 4.0)
    assert row["forward_backward_ratio"] == pytest.approx(5.0 / 6.0)
    assert row["sgpo_generation_share"] == pytest.approx(0.5) and row["online_dpo_generation_share"] == 0.4


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lengths", "1", "32"], "--lengths must all be >= 2"),
        (["--batch-sizes", "0"], "--batch-sizes must all be >= 2"),
        (["--repeats", "1"], "--repeats must be >= 2"),
    ],
)
def test_bad_grids_are_refused_before_any_run(argv, message, capsys):
    with pytest.raises(SystemExit):
        speed_sweep.parse_args(argv)
    assert message in capsys.readouterr().err


def test_each_point_runs_speed_py_with_its_length_and_batch_and_fixed_lengths():
    args = speed_sweep.parse_args(["--repeats", "3"])
    command = speed_sweep.point_command(args, 128, 16, Path("/tmp/x"))
    assert command[command.index("--max-new-tokens") + 1] == "128"
    assert command[command.index("--batch-size") + 1] == "16"
    assert command[command.index("--lengths") + 1] == "fixed"
    assert "--lora" in command and "--skip-memory" in command
    assert "--lora" not in speed_sweep.point_command(speed_sweep.parse_args(["--full"]), 32, 4, Path("/tmp/x"))


@pytest.mark.slow
def test_quick_sweep_writes_one_row_per_point(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / "speed_sweep.py"), "--quick", "--lengths", "8"]
    command += ["--batch-sizes", "2", "4", "--repeats", "2", "--workers", "2", "--output-dir", str(tmp_path)]
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads((tmp_path / "speed_sweep.json").read_text())
    assert [(p["length"], p["batch_size"]) for p in report["points"]] == [(8, 2), (8, 4)]
    for row, raw in zip(report["points"], report["raw"]):
        assert row == speed_sweep.point_row(raw)
        assert all(math.isfinite(value) and value > 0 for key, value in row.items() if key.endswith("_s"))
        assert row["vs_online_dpo_q1"] <= row["vs_online_dpo"] <= row["vs_online_dpo_q3"]
        assert len(raw["timing"]["sgpo_dpo"]["samples"]) == 2
    table = (tmp_path / "speed_sweep.md").read_text()
    assert table.count("\n| 8 |") == 2 and "SGPO / OnlineDPO+RM" in table
