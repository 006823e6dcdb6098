"""`improver_ready_at`: Step 1 ends when held-out rewrites do what Step 1 teaches (keep a draft the initial policy
finds plausible, make an implausible one more plausible), capped by `improver_warmup_steps`; the signal, the schedule
change, its checkpoint state and what the run says."""

import logging
from types import SimpleNamespace

import pytest
import torch

from trl_sgpo import SGPOTrainer
from trl_sgpo.method.schedule import DPO, IMPROVER
from trl_sgpo.records import Completion
from trl_sgpo.run.phases import SGPOPhaseCallback
from trl_sgpo.run.readiness import ImproverReadiness, closer_share, readiness_of

from .helpers import WORDS, conversational_dataset, make_config, rule_sampler, tiny_model


def test_readiness_on_a_request_with_many_right_answers():
    """ "Name a fruit.": the reference says "pear"; the draft "apple" is right too, and as plausible to the initial
    policy. Keeping it is what Step 1 teaches; swapping it for "plum" (also right, and closer to "pear" by edit
    distance) is not, though it would count as progress for a measure that rewards moving toward the reference."""
    apple, plum, pear = [1, 2, 3, 4, 5], [6, 7, 3, 4], [6, 2, 3, 4]
    broken, fixed, garbage = [1, 9, 9, 9, 9, 9], [6, 2, 3, 5], [8, 8, 8]
    drafts = [Completion(apple, True), Completion(apple, True), Completion(broken, True), Completion(broken, True)]
    rewrites = [Completion(apple, True), Completion(plum, True), Completion(fixed, True), Completion(garbage, True)]
    keeps = [True, True, False, False]  # the initial policy: apple as plausible as pear; the broken draft is not
    margins = [0.0, -0.1, 1.2, -0.8]  # rewrite minus draft, mean token log-probability under the initial policy
    assert readiness_of(drafts, rewrites, keeps, margins) == 0.5  # the kept apple and the fixed draft
    references = [Completion(pear, True)] * 4
    assert closer_share(drafts, rewrites, references) == 0.75  # edit distance calls the swap and the garbage progress
    assert readiness_of(drafts[:2], [Completion(plum, True)] * 2, keeps[:2], margins[:2]) == 0.0  # always changes


def _plausible_if_a_reference(tokenizer):
    """The initial policy, as the readiness reads it: a reference is plausible (-0.5 per token), anything else is
    not (-2.0): so every rule-sampler draft ('cbax') is moved, and a rewrite that is the reference is progress."""
    references = {word[::-1] for word in WORDS}

    def reference_logps(batch, rows):
        plausible = [tokenizer.decode(tokens[:-1]) in references for tokens in rows.tokens]
        return torch.tensor([-0.5 if good else -2.0 for good in plausible]).unsqueeze(1) * rows.mask

    return reference_logps


def _trainer(tmp_path, tokenizer, **overrides):
    settings = dict(
        improver_ready_at=0.5,
        improver_readiness_steps=2,
        improver_readiness_prompts=2,
        improver_warmup_steps=4,
        improver_steps=0,
        dpo_steps=1,
        max_steps=6,
        logging_steps=1,
    )
    settings.update(overrides)
    return SGPOTrainer(
        model=tiny_model(tokenizer),
        args=make_config(tmp_path, **settings),
        train_dataset=conversational_dataset(10),
        processing_class=tokenizer,
    )


def _readiness(trainer) -> ImproverReadiness:
    return next(c for c in trainer.callback_handler.callbacks if isinstance(c, ImproverReadiness))


def test_step_1_ends_when_the_improver_is_ready(tmp_path, tokenizer, caplog):
    trainer = _trainer(tmp_path, tokenizer)
    assert len(trainer.train_dataset) == 8  # two rows set aside to measure on
    trainer.sampler = rule_sampler(tokenizer)  # the improver writes the reference
    _readiness(trainer).reference_logps = _plausible_if_a_reference(tokenizer)
    with caplog.at_level(logging.WARNING, logger="trl_sgpo.run.readiness"):
        trainer.train()
    assert trainer.phase_callback.phase_history == [IMPROVER, IMPROVER] + [DPO] * 4  # cap 4, ready at step 2
    assert "Step 1 readiness at step 2: 100%" in caplog.text and "Step 1 ends" in caplog.text
    logged = [log["sgpo/improver_readiness"] for log in trainer.state.log_history if "sgpo/improver_readiness" in log]
    assert logged == [1.0]


def test_step_1_stops_at_its_cap_when_the_improver_never_gets_ready(tmp_path, tokenizer, caplog):
    trainer = _trainer(tmp_path, tokenizer)
    sample = rule_sampler(tokenizer)

    def garbage_rewrites(model, prompt_ids, prompt_mask, role, cache=None, **kwargs):
        if role == "improver_greedy":
            return [Completion(tokenizer("qqqq", add_special_tokens=False)["input_ids"], True) for _ in prompt_ids]
        return sample(model, prompt_ids, prompt_mask, role, cache)

    trainer.sampler = garbage_rewrites
    _readiness(trainer).reference_logps = _plausible_if_a_reference(tokenizer)
    with caplog.at_level(logging.WARNING, logger="trl_sgpo.run.readiness"):
        trainer.train()
    assert trainer.phase_callback.phase_history == [IMPROVER] * 4 + [DPO] * 2
    assert caplog.text.count("Step 1 readiness at step") == 1  # step 2 (step 4 is the cap)
    assert "NOT READY: Step 1 reached its cap (improver_warmup_steps=4)" in caplog.text
    assert "last readiness 0%" in caplog.text and "ERROR" in caplog.text  # said at error level


def test_an_early_end_of_step_1_is_kept_across_a_resume():
    callback = SGPOPhaseCallback(improver_warmup_steps=5, improver_steps=0, dpo_steps=1)
    state = SimpleNamespace(max_steps=10, global_step=0, stateful_callbacks={})
    callback.on_train_begin(None, state, None)
    callback.end_warmup_at(2)
    saved = callback.state()
    assert saved["attributes"]["warmup_ended_at"] == 2 and saved["args"]["improver_warmup_steps"] == 5
    resumed = SGPOPhaseCallback(improver_warmup_steps=5, improver_steps=0, dpo_steps=1)
    resumed.on_train_begin(
        None, SimpleNamespace(max_steps=10, global_step=3, stateful_callbacks={"SGPOPhaseCallback": saved}), None
    )
    assert resumed.phase_at(1) == IMPROVER and resumed.phase_at(2) == DPO and resumed.phase == DPO


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"improver_ready_at": 1.5}, "share in \\(0, 1\\]"),
        ({"improver_warmup_steps": 0}, "needs pair_source='sgpo' and a Step 1"),
        ({"pair_source": "spin"}, "needs pair_source='sgpo'"),
    ],
)
def test_bad_readiness_settings_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(tmp_path, **{"improver_ready_at": 0.5, "improver_warmup_steps": 2, **overrides})


def test_too_few_rows_to_set_aside_is_refused(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="improver_readiness_prompts=2 rows aside, and train_dataset has only 2"):
        SGPOTrainer(
            model=tiny_model(tokenizer),
            args=make_config(tmp_path, improver_ready_at=0.5, improver_readiness_prompts=2, improver_warmup_steps=2),
            train_dataset=conversational_dataset(2),
            processing_class=tokenizer,
        )
