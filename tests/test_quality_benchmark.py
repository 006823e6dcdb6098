"""`python benchmarks/quality.py --quick` runs every arm and writes its table, JSON and summary."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.toy.report import gate_and_goal_lines


SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"
ARMS = {
    "sft",
    "spin",
    "online_dpo_oracle",
    "sgpo",
    "sgpo_no_step1",
    "sgpo_no_sft_mix",
    "sgpo_draft_anchor",
    "sgpo_sees_reference",
    "sgpo_template",
    "edit_pairs",
}
SUMMARY_KEYS = {
    "start",
    "oracle_gain",
    "sgpo_minus_spin",
    "sgpo_minus_sft",
    "sigma_sgpo_minus_spin",
    "sigma_sgpo_minus_sft",
    "sgpo_default",
}


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_quick_quality_benchmark_reports_every_arm_gate_and_goal(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--workers", "2", "--output-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads((tmp_path / "quality.json").read_text())
    final = {run["arm"]: run for run in report["final"]}
    assert set(final) == ARMS
    for run in final.values():
        for split in ("validation", "test"):
            for metric in ("exact_match", "partial_credit", "sampled_exact_match"):
                assert 0.0 <= run[split][metric] <= 1.0 and math.isfinite(run[split][metric])
        assert run["seconds"] > 0
    for arm in ARMS - {"sft", "spin", "online_dpo_oracle", "edit_pairs"}:  # the SGPO arms' rewrite verdicts
        diagnostics = final[arm]["diagnostics"]
        shares = [diagnostics[f"rewrite_{key}"] for key in ("better", "worse", "same_score", "identical")]
        assert sum(shares) == pytest.approx(1.0)
        assert 0.0 <= diagnostics["sgpo/rewrite_closer"] <= 1.0
    assert 0.0 <= final["online_dpo_oracle"]["diagnostics"]["tied_pairs"] <= 1.0
    # The summary: gate and goal numbers, in points of the headline (sampled exact match), consistent with the runs.
    summary = report["summary"]
    assert set(summary) == SUMMARY_KEYS
    start = 100 * report["start"]["sampled_exact_match"]
    assert summary["start"] == pytest.approx(start)
    oracle = 100 * final["online_dpo_oracle"]["test"]["sampled_exact_match"]
    assert summary["oracle_gain"] == pytest.approx(oracle - start)
    sgpo, spin = (100 * final[arm]["test"]["sampled_exact_match"] for arm in ("sgpo", "spin"))
    assert summary["sgpo_minus_spin"] == pytest.approx(sgpo - spin)
    assert summary["sgpo_default"]["improver_warmup_steps"] == 0.1 and summary["sgpo_default"]["improver_steps"] == 0
    headroom = report["start"]["validation_headroom"]
    assert headroom["greedy"] <= headroom["pass_at_k"] + 1e-9 and headroom["k"] == 8
    table = (tmp_path / "quality.md").read_text()
    assert table.strip() in completed.stdout  # printed as well as written
    assert "Sensitivity gate: the oracle arm gains" in table and "Goal: SGPO - SPIN" in table
    for arm in ARMS:
        assert f"| {arm} |" in table
    assert "python benchmarks/quality.py --quick" in table


def test_the_gate_and_the_goal_say_not_run_when_their_arms_are_left_out():
    """`--arms sft spin sgpo` has no oracle arm: the gate is not run (no "+nan ... FAIL"); `--arms sgpo` alone
    cannot judge the goal either."""
    summary = {
        "oracle_gain": math.nan,
        "sgpo_minus_spin": 3.0,
        "sigma_sgpo_minus_spin": 1.0,
        "sgpo_minus_sft": 4.0,
        "sigma_sgpo_minus_sft": 1.0,
    }
    gate, goal = gate_and_goal_lines(summary)
    assert gate.startswith("Sensitivity gate: not run") and "nan" not in gate and "FAIL" not in gate
    assert goal.startswith("Goal: SGPO - SPIN = +3.0")
    gate, goal = gate_and_goal_lines({**summary, "oracle_gain": 9.0, "sgpo_minus_sft": math.nan})
    assert gate.endswith("PASS.") and goal.startswith("Goal: not judged")
