"""`python benchmarks/quality.py --quick` runs every arm in both regimes and writes its table and JSON."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest


SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"
ARMS = {"sft", "spin", "online_dpo_oracle", "sgpo_reference", "sgpo_interpolate"}


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_quick_quality_benchmark_reports_every_arm_and_regime(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--output-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads((tmp_path / "quality.json").read_text())
    final = {(run["regime"], run["arm"]): run for run in report["final"]}
    assert set(final) == {(regime, arm) for regime in ("plain", "shifted") for arm in ARMS}
    for run in final.values():
        for split in ("validation", "test"):
            for metric in ("exact_match", "partial_credit"):
                assert 0.0 <= run[split][metric] <= 1.0 and math.isfinite(run[split][metric])
        assert run["seconds"] > 0
    for arm in ("sgpo_reference", "sgpo_interpolate"):  # the checker's verdict on every DPO pair
        diagnostics = final[("shifted", arm)]["diagnostics"]
        shares = [diagnostics[f"rewrite_{key}"] for key in ("better", "worse", "same_score", "identical")]
        assert sum(shares) == pytest.approx(1.0)
    table = (tmp_path / "quality.md").read_text()
    assert table.strip() in completed.stdout  # printed as well as written
    for arm in ARMS:
        assert f"| shifted | {arm} |" in table and f"| plain | {arm} |" in table
    assert "python benchmarks/quality.py --quick" in table
