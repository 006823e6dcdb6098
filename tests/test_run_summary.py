"""The end-of-run summary (`RunSummary`), from step records as the trainer hands them over: what it counts and what it
says, on one process."""

import math
from types import SimpleNamespace

from trl_sgpo.run.summary import RunSummary


ARGS = SimpleNamespace(gradient_accumulation_steps=1)


def _dpo_record(verdicts: list[str], closer: float) -> SimpleNamespace:
    return SimpleNamespace(phase="dpo", pair_verdicts=verdicts, rewrites=[], stats={"sgpo/rewrite_closer": closer})


def _summary(records) -> RunSummary:
    summary = RunSummary(reduce=lambda tensor: tensor)
    for record in records:
        summary.on_step_record(record)
    summary.on_train_end(ARGS, SimpleNamespace(is_world_process_zero=False), None)
    return summary


def test_the_summary_counts_steps_pairs_and_the_health_of_changed_rewrites():
    improver = SimpleNamespace(phase="improver", pair_verdicts=None, rewrites=None, stats={})
    dpo = [_dpo_record(["kept", "identical", "kept", "gated"], 1.0), _dpo_record(["identical"] * 4, math.nan)]
    summary = _summary([improver, improver, *dpo])
    assert summary.figures["step1_steps"] == 2 and summary.figures["dpo_steps"] == 2
    assert summary.figures["pairs_dropped"] == {"identical": 5, "gated": 1}
    assert summary.figures["rewrite_closer"] == 1.0  # the step where no rewrite changed its draft says nothing
    lines = summary.lines(ARGS)
    assert lines[:3] == [
        "SGPO run: 2 improver (Step 1) steps, 2 DPO steps.",
        "DPO pairs: 2 kept of 8 drafted (25%); dropped: 5 identical, 1 gated.",
        "Health: 100% of the improver's rewrites that changed their draft were closer to the reference than it "
        "(sgpo/rewrite_closer).",
    ]
    assert "too few for the health check" in lines[-1] and not any("only 2 of 8" in line for line in lines)


def test_few_pairs_kept_is_a_warning_that_reads_the_reasons():
    summary = _summary([_dpo_record(["identical"] * 15 + ["kept"], 1.0)] * 5)
    (warning,) = [line for line in summary.lines(ARGS) if line.startswith("WARNING: only")]
    assert warning.startswith("WARNING: only 5 of 80 DPO pairs were kept") and "keep_plausible" in warning
    assert not any("too few for the health check" in line for line in summary.lines(ARGS))  # 5 DPO steps suffice


def test_a_run_without_dpo_steps_says_its_step_1_only():
    summary = _summary([SimpleNamespace(phase="improver", pair_verdicts=None, rewrites=None, stats={})] * 3)
    assert summary.lines(ARGS) == ["SGPO run: 3 improver (Step 1) steps, 0 DPO steps."]
