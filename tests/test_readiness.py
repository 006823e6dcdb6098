"""`improver_ready_at`: Step 1 ends when held-out rewrites gain token overlap with the reference, capped by
`improver_warmup_steps`; the signal, the schedule change, its checkpoint state and what the run says."""

import logging
from types import SimpleNamespace

import pytest

from trl_sgpo import SGPOTrainer
from trl_sgpo.method.improver import token_overlap
from trl_sgpo.method.schedule import DPO, IMPROVER
from trl_sgpo.records import Completion
from trl_sgpo.run.phases import SGPOPhaseCallback
from trl_sgpo.run.readiness import readiness_of

from .helpers import conversational_dataset, make_config, rule_sampler, tiny_model


def test_token_overlap_does_not_reward_a_short_garbage_rewrite():
    reference = [7, 8]  # "122"
    long_wrong_draft = [1, 2, 3, 4, 5, 6, 9]  # "The sum of the two numbers is 124."
    short_garbage = [11, 12]  # "original original."
    good = [7, 8]
    assert token_overlap(good, reference) == 1.0 and token_overlap(short_garbage, reference) == 0.0
    assert token_overlap([7, 9], reference) == pytest.approx(0.5) and token_overlap([], []) == 1.0
    drafts, rewrites = (
        [Completion(long_wrong_draft, True)] * 2,
        [Completion(short_garbage, True), Completion(good, True)],
    )
    gain, closer = readiness_of(drafts, rewrites, [Completion(reference, True)] * 2)
    # edit distance calls both rewrites "closer" (they are shorter); the overlap counts the good one only
    assert closer == 1.0 and gain == 0.5
    # a draft already right, kept right by the rewrite, counts as ready; broken by it, does not
    assert (
        readiness_of(
            [Completion(good, True)] * 2,
            [Completion(good, True), Completion([7], True)],
            [Completion(reference, True)] * 2,
        )[0]
        == 0.5
    )


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


def test_step_1_ends_when_the_improver_is_ready(tmp_path, tokenizer, caplog):
    trainer = _trainer(tmp_path, tokenizer)
    assert len(trainer.train_dataset) == 8  # two rows set aside to measure on
    trainer.sampler = rule_sampler(tokenizer)  # the improver writes the reference
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
    with caplog.at_level(logging.WARNING, logger="trl_sgpo.run.readiness"):
        trainer.train()
    assert trainer.phase_callback.phase_history == [IMPROVER] * 4 + [DPO] * 2
    assert caplog.text.count("Step 1 readiness at step") == 1  # step 2 (step 4 is the cap)
    assert "reached its cap (improver_warmup_steps=4)" in caplog.text and "last readiness 0%" in caplog.text


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


def test_on_smollm2_rewrites_the_overlap_tells_garbage_from_progress(smollm2_dir):
    """The rewrites SmolLM2's untrained improver wrote (issue 17), against good ones, on its own tokenizer: the edit
    distance calls every short rewrite of a long wrong draft closer to the reference; the token overlap only those
    that carry the answer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)

    def completion(text):
        return Completion(tokenizer(text, add_special_tokens=False)["input_ids"], True)

    draft = completion("To find the sum, we add the tens first: 80 + 40 is 120, and the ones make it 124 in total.")
    garbage = [
        "protein strengthens the bones 2+times more than 100%.",
        "Try again, keep what is good, but fix the original original.",
        "Improve the answer.",  # an echo of the instruction
    ]
    good = ["122", "The sum is 122.", "80 + 42 = 122"]
    rewrites = [completion(text) for text in garbage + good]
    references = [completion("122")] * len(rewrites)
    gain, closer = readiness_of([draft] * len(rewrites), rewrites, references)
    assert closer == 1.0  # every one "closer" by edit distance: they are all shorter than the draft
    assert gain == 0.5  # the three good ones only
    garbage_gain, _ = readiness_of([draft] * 3, rewrites[:3], references[:3])
    assert garbage_gain == 0.0
