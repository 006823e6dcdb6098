"""The alternation schedule and the phase callback's saved state."""

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from trl_sgpo import PhaseSchedule, SGPOPhaseCallback


IMP, D = "improver", "dpo"


@pytest.mark.parametrize(
    "schedule, expected",
    [
        (PhaseSchedule(0, 1, 1), [IMP, D, IMP, D, IMP, D]),
        (PhaseSchedule(2, 1, 2), [IMP, IMP, IMP, D, D, IMP]),
        (PhaseSchedule(1, 2, 1, num_cycles=1), [IMP, IMP, IMP, D, D, D]),
        (PhaseSchedule(0, 0, 1), [D] * 6),
        (PhaseSchedule(3, 0, 0), [IMP, IMP, IMP, D, D, D]),
        (PhaseSchedule(0, 1, 0), [IMP] * 6),
    ],
)
def test_phases_follow_the_schedule(schedule, expected):
    assert schedule.phases(6) == expected


def test_a_schedule_of_zero_steps_is_rejected():
    with pytest.raises(ValueError, match="zero steps in every phase"):
        PhaseSchedule(0, 0, 0)


def test_spin_skips_the_improver():
    callback = SGPOPhaseCallback(improver_warmup_steps=2, skip_improver=True)
    assert [callback.phase_at(step) for step in range(4)] == [D] * 4


def _run_steps(callback, state, steps):
    args = TrainingArguments(output_dir="unused", report_to="none")
    for _ in range(steps):
        callback.on_step_begin(args, state, TrainerControl())
        callback.on_step_end(args, state, TrainerControl())
        state.global_step += 1


def test_state_round_trip_continues_mid_phase():
    callback = SGPOPhaseCallback(improver_warmup_steps=1, improver_steps=2, dpo_steps=2)
    state = TrainerState()
    _run_steps(callback, state, 4)  # IMP | IMP IMP | D  -> the next step is the second DPO step of the cycle
    assert callback.phase_history == [IMP, IMP, IMP, D]
    saved = callback.state()
    assert saved["attributes"]["phase_runs"] == [[IMP, 3], [D, 1]]

    resumed = SGPOPhaseCallback(**saved["args"])
    state.stateful_callbacks = {"SGPOPhaseCallback": saved}
    resumed.on_train_begin(TrainingArguments(output_dir="unused", report_to="none"), state, TrainerControl())
    assert resumed.phase == D and not resumed.phase_started
    _run_steps(resumed, state, 3)
    assert resumed.phase_history == [IMP, IMP, IMP, D, D, IMP, IMP]


def test_a_fractional_warmup_is_resolved_for_the_run():
    schedule = PhaseSchedule(0.25, 1, 1)
    assert schedule.for_run(8).improver_warmup_steps == 2
    assert schedule.for_run(8).phases(6) == [IMP, IMP, IMP, D, IMP, D]
    assert schedule.phase_at(0) == IMP  # unresolved, a fraction counts as one step


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ((-1, 1, 1), "improver_warmup_steps must be >= 0"),
        ((0, -1, 1), "improver_steps must be >= 0"),
        ((2.5, 1, 1), "whole number of steps"),
        ((0, 1, 1, -2), "num_cycles must be >= 0"),
    ],
)
def test_bad_schedules_are_refused_naming_the_field(settings, message):
    with pytest.raises(ValueError, match=message):
        PhaseSchedule(*settings)
