"""`benchmarks/speed.py --quick` runs end to end and writes every field the report needs (no timing assertions)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
ARMS = ("online_dpo", "sgpo_dpo", "sgpo_improver")
COMPONENTS = ("step", "training_step", "generation", "forward_backward", "optimizer", "rest")
MEMORY_FIELDS = ("baseline_bytes", "peak_bytes", "delta_bytes", "ratio_vs_online_dpo", "peak_ratio_vs_online_dpo")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_quick_speed_benchmark_writes_complete_results(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--quick", "--output-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]

    results = json.loads((tmp_path / "speed.json").read_text())
    report = (tmp_path / "speed.md").read_text()
    assert "online_dpo" in report and "Goals" in report

    timing = results["timing"]
    assert set(timing) == set(ARMS)
    for arm in ARMS:
        summary = timing[arm]["summary"]
        for component in COMPONENTS:
            assert _positive(summary[component]["median"]), (arm, component, summary[component])
            assert math.isfinite(summary[component]["iqr"]) and summary[component]["iqr"] >= 0
        assert len(timing[arm]["samples"]) == results["environment"]["settings"]["repeats"]
        assert _positive(timing[arm]["ratio_vs_online_dpo"])
        assert _positive(timing[arm]["paired_ratio_vs_online_dpo"]["median"])
        for share in timing[arm]["fractions"].values():
            assert _positive(share) and share < 1
        work = timing[arm]["work"]
        assert _positive(work["generated_tokens"]) and _positive(work["forward_tokens_grad"])
    assert timing["online_dpo"]["ratio_vs_online_dpo"] == 1.0
    # Every arm generates completions of exactly max_new_tokens tokens: the same number of tokens per completion.
    new_tokens = results["environment"]["settings"]["max_new_tokens"]
    for arm in ARMS:
        work = timing[arm]["work"]
        assert work["generated_tokens"] == new_tokens * work["generated_rows"]

    memory = results["memory"]
    assert set(memory) == {"full", "lora"}
    for mode in ("full", "lora"):
        assert set(memory[mode]) == set(ARMS)
        for arm in ARMS:
            entry = memory[mode][arm]
            for key in MEMORY_FIELDS:
                assert _positive(entry[key]), (mode, arm, key, entry[key])

    goals = {goal["name"]: goal for goal in results["goals"]}
    assert set(goals) >= {"dpo_step_ratio", "improver_step_ratio", "lora_peak_ratio_dpo", "rest_fraction_dpo"}
    for goal in goals.values():
        assert _positive(goal["value"]) and isinstance(goal["met"], bool)
