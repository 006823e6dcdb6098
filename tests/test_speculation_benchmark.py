"""`benchmarks/speculation.py --quick` runs end to end: both rewrite settings timed, greedy rewrites identical with and
without speculation, every field of the report present (no timing assertions)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.speed.speculation import main


ROOT = Path(__file__).resolve().parents[1]


def test_quick_speculation_benchmark_writes_complete_results(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / "speculation.py"), "--quick", "--output-dir", str(tmp_path)]
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads((tmp_path / "speculation.json").read_text())
    assert set(report["results"]) == {"greedy", "sampled"}
    for name, result in report["results"].items():
        summary = result["summary"]
        assert len(result["samples"]) == report["settings"]["repeats"]
        for key in ("draft", "plain", "speculated"):
            assert math.isfinite(summary[key]) and summary[key] > 0
        for ratio in ("speculated_vs_plain", "plain_vs_draft", "speculated_vs_draft"):
            assert summary[ratio]["q1"] <= summary[ratio]["median"] <= summary[ratio]["q3"]
        assert 0 < summary["accepted_share"] <= 1  # the toy's rewrites copy much of their drafts
        assert summary["identical_greedy_rewrites"] is (True if name == "greedy" else None)
    assert "Goal: speculated rewrite generation" in (tmp_path / "speculation.md").read_text()


def test_step1_updates_need_the_real_start():
    """Step 1 trains the real model's improver: on the toy world the flag is refused, before anything loads."""
    for argv in (["--step1-updates", "4"], ["--real-start", "--step1-updates", "-1"]):
        with pytest.raises(SystemExit):
            main(argv)
