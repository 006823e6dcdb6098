"""The three upstream OnlineDPOTrainer defects (TRL 1.16), each fixed in SGPOTrainer.

Each test runs on SGPOTrainer and, marked `xfail(strict=True)`, on the upstream trainer: the upstream case must keep
failing, which shows the test detects the defect (if TRL fixes it, the strict xfail turns red and tells us).
"""

import math

import pytest
import torch
from transformers import TrainerCallback
from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

from trl_sgpo import SGPOTrainer
from trl_sgpo.step.sampling import Sampler

from .helpers import (
    assert_gradients_close,
    conversational_dataset,
    make_config,
    reward_length,
    rule_generate_for_online_dpo,
    rule_sampler,
    tiny_model,
)


class GradientRecorder(TrainerCallback):
    """Keeps the accumulated gradients of the first optimizer step."""

    def __init__(self):
        self.gradients = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.gradients is None:
            self.gradients = {
                name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None
            }


def _upstream_trainer(tmp_path, tokenizer, dataset, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "upstream"),
        per_device_train_batch_size=4,
        max_steps=1,
        logging_steps=1,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        bf16=False,
        gradient_checkpointing=False,
        max_new_tokens=6,
        disable_tqdm=True,
    )
    settings.update(overrides)
    trainer = OnlineDPOTrainer(
        model=tiny_model(tokenizer),
        reward_funcs=reward_length,
        args=OnlineDPOConfig(**settings),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer._generate = rule_generate_for_online_dpo(trainer)
    return trainer


def _sgpo_trainer(tmp_path, tokenizer, dataset, **overrides):
    settings = dict(improver_steps=0, dpo_steps=1, max_steps=1, max_grad_norm=0.0)
    settings.update(overrides)
    trainer = SGPOTrainer(
        model=tiny_model(tokenizer),
        args=make_config(tmp_path, **settings),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.sampler = rule_sampler(tokenizer)
    return trainer


def _first_step_gradients(make_trainer, batch_size, accumulation):
    recorder = GradientRecorder()
    trainer = make_trainer(per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation)
    trainer.add_callback(recorder)
    trainer.train()
    return recorder.gradients


@pytest.mark.parametrize(
    "which",
    [
        "sgpo",
        pytest.param("upstream", marks=pytest.mark.xfail(strict=True, reason="upstream sums instead of averaging")),
    ],
)
def test_gradient_accumulation_matches_one_big_batch(tmp_path, tokenizer, which):
    dataset = conversational_dataset(4)
    if which == "sgpo":

        def make(**kw):
            return _sgpo_trainer(tmp_path, tokenizer, dataset, improver_loss_weight=1.0, chosen_nll_weight=0.3, **kw)
    else:

        def make(**kw):
            return _upstream_trainer(tmp_path, tokenizer, dataset, max_grad_norm=0.0, **kw)

    one_batch = _first_step_gradients(make, batch_size=4, accumulation=1)
    accumulated = _first_step_gradients(make, batch_size=2, accumulation=2)
    assert one_batch.keys() == accumulated.keys() and one_batch
    assert sum(g.abs().sum().item() for g in one_batch.values()) > 0
    assert_gradients_close(accumulated, one_batch)


@pytest.mark.parametrize(
    "which",
    [
        "sgpo",
        pytest.param("upstream", marks=pytest.mark.xfail(strict=True, raises=TypeError, reason="float list index")),
    ],
)
def test_list_valued_beta_switches_per_epoch(tmp_path, tokenizer, which):
    dataset = conversational_dataset(4)
    settings = dict(beta=[0.1, 0.05], per_device_train_batch_size=2, num_train_epochs=2, max_steps=-1)
    if which == "sgpo":
        trainer = _sgpo_trainer(tmp_path, tokenizer, dataset, **settings)
    else:
        trainer = _upstream_trainer(tmp_path, tokenizer, dataset, **settings)
    trainer.train()
    betas = [log["beta"] for log in trainer.state.log_history if "beta" in log]
    assert betas == [0.1, 0.1, 0.05, 0.05]


@pytest.mark.parametrize(
    "which",
    [
        "sgpo",
        pytest.param(
            "upstream",
            marks=pytest.mark.xfail(strict=True, raises=ValueError, reason="no prediction_step for prompt data"),
        ),
    ],
)
def test_evaluation_reports_the_reference_nll(tmp_path, tokenizer, which):
    dataset = conversational_dataset(4)
    eval_dataset = conversational_dataset(2)
    if which == "sgpo":
        trainer = _sgpo_trainer(tmp_path, tokenizer, dataset, per_device_eval_batch_size=2)
        trainer.eval_dataset = eval_dataset
    else:
        trainer = _upstream_trainer(tmp_path, tokenizer, dataset, per_device_eval_batch_size=2)
        trainer.eval_dataset = eval_dataset
    metrics = trainer.evaluate()

    total, count = 0.0, 0
    for row in eval_dataset:
        prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        target = tokenizer(row["completion"][0]["content"], add_special_tokens=False)["input_ids"] + [2]
        with torch.no_grad():
            logps = trainer.model(torch.tensor([prompt_ids + target])).logits.log_softmax(-1)[0]
        total -= sum(logps[len(prompt_ids) - 1 + i, token].item() for i, token in enumerate(target))
        count += len(target)
    assert math.isfinite(metrics["eval_loss"])
    assert metrics["eval_loss"] == pytest.approx(total / count, rel=1e-5)


def test_eval_metric_scores_greedy_generations(tmp_path, tokenizer):
    seen = {}

    def exact_match(predictions, references):
        seen["predictions"], seen["references"] = predictions, references
        return {"exact_match": sum(p == r for p, r in zip(predictions, references)) / len(references), "note": "x"}

    trainer = _sgpo_trainer(tmp_path, tokenizer, conversational_dataset(4), per_device_eval_batch_size=2)
    trainer.eval_dataset = conversational_dataset(3)
    trainer.eval_metric = exact_match
    metrics = trainer.evaluate()
    assert seen["references"] == ["cba", "olleh", "dlrow"]
    assert seen["predictions"] == ["cba", "olleh", "dlrow"]  # the rule sampler answers right in the 'eval' role
    assert metrics["eval_exact_match"] == 1.0 and "eval_note" not in metrics
    assert "eval_loss" in metrics
    # the trainer's own sampler was replaced above: one built from the same settings
    sampler = Sampler(
        trainer.args, trainer.generation_kwargs, trainer.eos_token_ids, 0, trainer.accelerator, *[None] * 2
    )
    generation_config, _ = sampler.hf_generation["eval"]
    assert generation_config.do_sample is False  # evaluation generates greedily
