"""`improver_warmup_drafts="initial"`: Step 1 trains on drafts sampled once, before its first update (Figure 1)."""

import logging

import pytest

from trl_sgpo import SGPOTrainer
from trl_sgpo.method.schedule import DPO, IMPROVER
from trl_sgpo.run.initial_drafts import pool_rows

from .helpers import conversational_dataset, make_config, prompt_texts, tiny_model


def _recording_trainer(tmp_path, tokenizer, source: str, rows: int = 6, **overrides):
    """A trainer whose sampler records, for each call, its role, the step and the prompts (then samples as usual)."""
    settings = dict(
        improver_warmup_drafts=source,
        improver_warmup_steps=4,
        improver_steps=0,
        max_steps=5,
        per_device_train_batch_size=2,
        improver_filter_outliers=False,
    )
    settings.update(overrides)
    trainer = SGPOTrainer(
        model=tiny_model(tokenizer),
        args=make_config(tmp_path, **settings),
        train_dataset=conversational_dataset(rows),
        processing_class=tokenizer,
    )
    sample, calls = trainer.sampler, []

    def recording(model, prompt_ids, prompt_mask, role, cache=None, **kwargs):
        calls.append((role, trainer.state.global_step, prompt_texts(tokenizer, prompt_ids, prompt_mask)))
        return sample(model, prompt_ids, prompt_mask, role, cache=cache)

    trainer.sampler = recording
    return trainer, calls


def test_step_1_trains_on_the_initial_policys_drafts_sampled_once(tmp_path, tokenizer, caplog):
    trainer, calls = _recording_trainer(tmp_path, tokenizer, "initial")
    served = []
    next_batch = trainer.initial_drafts.next_batch
    trainer.initial_drafts.next_batch = lambda model: served.append(next_batch(model)) or served[-1]
    with caplog.at_level(logging.WARNING, logger="trl_sgpo.run.initial_drafts"):
        trainer.train()
    assert trainer.phase_callback.phase_history == [IMPROVER] * 4 + [DPO]
    step_1 = [(role, step) for role, step, _ in calls if step < 4]
    # 6 rows (Step 1 could use 4 steps x 2), 3 micro-batches, all sampled before the first update
    assert step_1 == [("policy", 0)] * 3
    assert [len(batch.drafts) for batch in served] == [2, 2, 2, 2]
    assert served[3] is served[0]  # the fourth step cycles back to the first micro-batch: nothing resampled
    pooled = sorted(text for _, step, texts in calls if step == 0 for text in texts)
    assert len(set(pooled)) == 6  # every row of the data set, once
    assert [role for role, step, _ in calls if step == 4] == ["policy", "improver"]  # DPO samples fresh drafts
    assert trainer.initial_drafts is None  # the pool is freed once Step 1 is over
    assert "sampled 6 drafts from the initial policy" in caplog.text


def test_fresh_drafts_are_sampled_at_every_step_1_step(tmp_path, tokenizer):
    trainer, calls = _recording_trainer(tmp_path, tokenizer, "fresh")
    trainer.train()
    assert [(role, step) for role, step, _ in calls if step < 4] == [("policy", step) for step in range(4)]


def test_the_pool_is_as_large_as_step_1_can_use(tmp_path, tokenizer):
    trainer, calls = _recording_trainer(tmp_path, tokenizer, "initial", rows=20, improver_warmup_steps=3)
    trainer.train()
    # 3 steps x 2 rows of the 20: the pool, sampled at step 0; then the DPO steps sample their own
    assert sum(len(texts) for role, step, texts in calls if role == "policy" and step == 0) == 3 * 2
    assert [step for role, step, _ in calls if role == "policy"] == [0, 0, 0, 3, 4]


def test_each_process_gets_its_own_whole_micro_batches():
    rows = conversational_dataset(11)
    first, second = (pool_rows(rows, 20, micro_batch=2, seed=0, process=p, processes=2) for p in (0, 1))
    assert [len(batch["prompt"]) for batch in first] == [len(batch["prompt"]) for batch in second] == [2, 2]
    prompts = [str(p) for batches in (first, second) for batch in batches for p in batch["prompt"]]
    assert len(set(prompts)) == 8  # 11 rows cut to whole steps of 2 x 2: no row twice, none on both processes


@pytest.mark.parametrize("overrides", [dict(improver_warmup_steps=0), dict(pair_source="spin")])
def test_initial_drafts_without_a_step_1_sample_no_pool(tmp_path, tokenizer, overrides):
    """The default 'initial' with no Step 1 (a Step 2 run, or a pair source without an improver) changes nothing:
    no pool is sampled, every step samples its own drafts."""
    trainer, calls = _recording_trainer(tmp_path, tokenizer, "initial", improver_steps=0, max_steps=2, **overrides)
    trainer.train()
    assert trainer.phase_callback.phase_history == [DPO, DPO]
    assert [step for role, step, _ in calls if role == "policy"] == [0, 1]  # one micro-batch each, no pool
