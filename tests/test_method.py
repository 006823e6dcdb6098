"""The method issue's pieces: Step 1 first, the policy's SFT loss in improver updates, the reference-aware template,
the mechanical edit pairs, and the reward-free health signal with its warning."""

import logging

import pytest
import torch

from trl_sgpo import SGPOConfig, SGPOTrainer
from trl_sgpo.method.improver import improver_target, render_improver_prompt, uses_reference
from trl_sgpo.method.objectives import token_mean_nll
from trl_sgpo.method.schedule import DPO, IMPROVER, resolve_warmup_steps
from trl_sgpo.method.step_stats import REWRITE_HEALTH_WINDOW
from trl_sgpo.run.sample_table import sample_rows

from .helpers import (
    assert_gradients_close,
    conversational_dataset,
    make_config,
    prompt_texts,
    rule_sampler,
    tiny_model,
)


def _rows(num_rows: int = 4) -> dict:
    rows = conversational_dataset(num_rows)
    return {"prompt": rows["prompt"], "completion": rows["completion"]}


def _trainer(tmp_path, tokenizer, **overrides) -> SGPOTrainer:
    trainer = SGPOTrainer(
        model=tiny_model(tokenizer),
        args=make_config(tmp_path, **overrides),
        train_dataset=conversational_dataset(8),
        processing_class=tokenizer,
    )
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def _gradients(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------------------------------ Step 1 first


def test_default_run_starts_with_step_1_then_optimizes_preferences(tmp_path, tokenizer):
    """The default schedule is the paper's Figure 1: improver training (10% of the run), then preference steps."""
    defaults = SGPOConfig(output_dir=str(tmp_path / "d"), use_cpu=True)
    assert (defaults.improver_warmup_steps, defaults.improver_steps, defaults.dpo_steps) == (0.1, 0, 1)
    schedule = {name: getattr(defaults, name) for name in ("improver_warmup_steps", "improver_steps", "dpo_steps")}
    trainer = SGPOTrainer(
        model=tiny_model(tokenizer),
        # the test factory pins a schedule of its own: give it the defaults
        args=make_config(tmp_path, max_steps=20, logging_steps=1, **schedule),
        train_dataset=conversational_dataset(8),
        processing_class=tokenizer,
    )
    trainer.sampler = rule_sampler(tokenizer)
    trainer.train()
    phases = trainer.phase_callback.phase_history
    assert phases == [IMPROVER] * 2 + [DPO] * 18  # ceil(0.1 * 20) steps of Step 1, then DPO steps only
    logged = [log["sgpo/phase"] for log in trainer.state.log_history if "sgpo/phase" in log]
    assert logged[:3] == [0.0, 0.0, 1.0]


@pytest.mark.parametrize(("value", "max_steps", "steps"), [(0.3, 10, 3), (0.25, 7, 2), (0.01, 5, 1), (4, 100, 4)])
def test_warmup_fraction_resolves_against_the_run_length(value, max_steps, steps):
    assert resolve_warmup_steps(value, max_steps) == steps


def test_warmup_must_be_whole_steps_or_a_fraction(tmp_path):
    with pytest.raises(ValueError, match="whole number of steps"):
        make_config(tmp_path, improver_warmup_steps=2.5)


# -------------------------------------------------------------------------------------------- the SFT mix


@pytest.mark.parametrize(
    ("sft_target", "improver_format"), [("reference", "template"), ("draft", "template"), ("draft", "next_turn")]
)
def test_mixed_improver_gradient_is_the_sum_of_its_parts(tmp_path, tokenizer, sft_target, improver_format):
    """improver NLL + w * policy SFT: its gradient equals the improver-only gradient plus w times the SFT one, the SFT
    rows being the references or (``policy_sft_target="draft"``) the policy's own drafts; in the next turn, scored in
    the improver's packed pass."""
    weight = 0.7
    grads = {}
    for name, sft_weight in (("mixed", weight), ("improver_only", 0.0)):
        trainer = _trainer(
            tmp_path / name,
            tokenizer,
            improver_steps=1,
            dpo_steps=0,
            policy_sft_weight=sft_weight,
            policy_sft_target=sft_target,
            improver_format=improver_format,
            improver_instruction="improve",
        )
        trainer.sampler = rule_sampler(tokenizer)
        trainer.model.zero_grad()
        trainer.training_step(trainer.model, _rows())
        grads[name] = _gradients(trainer.model)
    # The SFT part alone, computed directly on the same model and prompts.
    trainer.model.zero_grad()
    rows = _rows()
    prompt_ids, prompt_mask = trainer.layout.tokenize_prompts(trainer.layout.policy_prompt_texts(rows["prompt"]))
    references = [trainer.layout.reference_completion(m[0]["content"]) for m in rows["completion"]]
    if sft_target == "draft":
        drafts = trainer.sampler(trainer.model, prompt_ids, prompt_mask, "policy")
        # The two SFT targets differ, so the choice shows in the gradient.
        assert [d.token_ids for d in drafts] != [r.token_ids for r in references]
        references = drafts
    padded = trainer.layout.pad(references)
    logps = trainer.scorer.forward(trainer.model, prompt_ids, prompt_mask, padded.ids, padded.mask)
    loss = token_mean_nll(logps, padded.mask).sum() / 4  # the SFT loss by its definition, over 4 prompts
    (weight * loss).backward()
    sft = _gradients(trainer.model)
    assert set(grads["mixed"]) == set(sft)
    assert_gradients_close(grads["mixed"], {name: grads["improver_only"][name] + sft[name] for name in sft})
    assert any(g.abs().sum() > 0 for g in sft.values())  # the SFT part is not a no-op


def test_an_unknown_policy_sft_target_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Unknown policy_sft_target 'drafts'"):
        make_config(tmp_path, policy_sft_target="drafts")


def test_policy_sft_loss_is_logged_in_improver_steps(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, improver_steps=1, dpo_steps=0)
    trainer.sampler = rule_sampler(tokenizer)
    trainer.training_step(trainer.model, _rows())
    assert trainer._metrics["sgpo/policy_sft_loss"][-1] > 0


# ---------------------------------------------------------------------------------- the reference-aware improver


def test_reference_field_is_filled_and_optional(tokenizer):
    template = "{prompt}|{response}|{reference}"
    assert uses_reference(template) and not uses_reference("{prompt}|{response}")
    text = render_improver_prompt(template, "reverse abc", "cbb", tokenizer, reference="cba")
    assert "reverse abc|cbb|cba" in text
    with pytest.raises(ValueError, match="no reference was given"):
        render_improver_prompt(template, "reverse abc", "cbb", tokenizer)


@pytest.mark.parametrize(
    ("template", "missing"), [("{prompt} {reference}", "{response}"), ("{response} {reference}", "{prompt}")]
)
def test_template_missing_a_required_field_is_rejected_naming_it(tmp_path, template, missing):
    with pytest.raises(ValueError, match=f"has no {missing} field"):
        make_config(tmp_path, improver_template=template)


def test_reference_aware_improver_sees_the_reference_when_it_rewrites(tmp_path, tokenizer):
    trainer = _trainer(
        tmp_path, tokenizer, improver_steps=0, dpo_steps=1, improver_template="{prompt}#{response}#{reference}"
    )
    seen = []
    sample = rule_sampler(tokenizer)

    def spy(model, prompt_ids, prompt_mask, role, cache=None, **kwargs):
        if role == "improver":
            seen.extend(prompt_texts(tokenizer, prompt_ids, prompt_mask))
        return sample(model, prompt_ids, prompt_mask, role)

    trainer.sampler = spy
    trainer.training_step(trainer.model, _rows())
    assert seen and all(text.count("#") == 2 for text in seen)
    assert "reverse abc#cbax#cba" in seen[0]  # prompt, the policy's draft, the reference


# ------------------------------------------------------------------------------------------ mechanical edit pairs


def test_edit_pairs_move_the_draft_toward_the_reference_without_a_model(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, pair_source="edit", improver_alpha=1.0, improver_steps=1, dpo_steps=1)
    assert trainer.phase_callback.skip_improver  # no improver role to train
    roles = []
    sample = rule_sampler(tokenizer)

    def spy(model, prompt_ids, prompt_mask, role, cache=None, **kwargs):
        roles.append(role)
        return sample(model, prompt_ids, prompt_mask, role)

    trainer.sampler = spy
    records = []
    trainer.step_listeners.append(records.append)
    trainer.training_step(trainer.model, _rows())
    assert roles == ["policy"]  # the chosen side is arithmetic, not a generation
    chosen = [tokenizer.decode(c.token_ids) for c in records[-1].chosen]
    assert chosen == ["cba", "olleh", "dlrow", "ytrewq"] and records[-1].rewrites is None
    assert trainer._metrics["sgpo/rewrite_closer"][-1] == 1.0
    assert "sgpo/improver_loss" not in trainer._metrics


def test_edit_target_applies_a_fraction_of_the_edits():
    draft, reference = [1, 2, 3, 4], [1, 9, 3, 8]
    assert improver_target("interpolate", draft, reference, 0.5) == ([1, 9, 3, 4], 1)


# ------------------------------------------------------------------------------------- the health signal


def test_rewrite_closer_counts_rewrites_nearer_the_reference(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, improver_steps=0, dpo_steps=1, improver_loss_weight=0.0)
    trainer.sampler = rule_sampler(tokenizer)  # drafts 'cbax' (one edit away), rewrites 'cba' (the reference)
    trainer.training_step(trainer.model, _rows())
    assert trainer._metrics["sgpo/rewrite_closer"][-1] == 1.0

    def worse(model, prompt_ids, prompt_mask, role, cache=None, **kwargs):  # the improver makes it worse: 'cbaxx'
        completions = rule_sampler(tokenizer)(model, prompt_ids, prompt_mask, "policy")
        if role == "improver":
            for completion in completions:
                completion.token_ids = completion.token_ids + tokenizer("x", add_special_tokens=False)["input_ids"]
        return completions

    trainer.sampler = worse
    trainer.training_step(trainer.model, _rows())
    assert trainer._metrics["sgpo/rewrite_closer"][-1] == 0.0


def _run_dpo_steps(trainer, sampler, steps: int) -> None:
    trainer.sampler = sampler
    for _ in range(steps):
        trainer.training_step(trainer.model, _rows())


def test_health_warning_fires_once_when_rewrites_are_rarely_closer(tmp_path, tokenizer, caplog):
    trainer = _trainer(tmp_path, tokenizer, improver_steps=0, dpo_steps=1, improver_loss_weight=0.0)
    same = rule_sampler(tokenizer)

    def identical(model, prompt_ids, prompt_mask, role, cache=None, **kwargs):  # the improver copies the draft
        return same(model, prompt_ids, prompt_mask, "policy")

    def worse(model, prompt_ids, prompt_mask, role, cache=None, **kwargs):  # the improver adds a wrong letter
        completions = same(model, prompt_ids, prompt_mask, "policy")
        if role == "improver":
            for completion in completions:
                completion.token_ids = completion.token_ids + tokenizer("x", add_special_tokens=False)["input_ids"]
        return completions

    with caplog.at_level(logging.WARNING, logger="trl_sgpo.method.step_stats"):
        # copies make no pair and say nothing of the improver (a right draft kept is right): not counted
        _run_dpo_steps(trainer, identical, REWRITE_HEALTH_WINDOW + 1)
        _run_dpo_steps(trainer, worse, REWRITE_HEALTH_WINDOW - 1)
        assert "improver role is not ready" not in caplog.text  # judged only after the window
        _run_dpo_steps(trainer, worse, 3)
    assert caplog.text.count("improver role is not ready") == 1
    assert "improver_warmup_only" in caplog.text


def test_no_health_warning_when_rewrites_are_closer(tmp_path, tokenizer, caplog):
    trainer = _trainer(tmp_path, tokenizer, improver_steps=0, dpo_steps=1, improver_loss_weight=0.0)
    with caplog.at_level(logging.WARNING, logger="trl_sgpo.method.step_stats"):
        _run_dpo_steps(trainer, rule_sampler(tokenizer), REWRITE_HEALTH_WINDOW + 1)
    assert "improver role is not ready" not in caplog.text


# ---------------------------------------------------------------------------------- the improver's learning rate


def test_improver_steps_use_their_own_learning_rate(tmp_path, tokenizer):
    """Improver steps update at improver_learning_rate, DPO steps at learning_rate, both under one schedule."""
    from transformers import TrainerCallback

    class RecordLearningRate(TrainerCallback):
        def __init__(self):
            self.rates = []

        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            self.rates.append(optimizer.param_groups[0]["lr"])

    recorder = RecordLearningRate()
    trainer = SGPOTrainer(
        model=tiny_model(tokenizer),
        args=make_config(
            tmp_path,
            max_steps=6,
            learning_rate=1e-3,
            improver_learning_rate=1e-2,
            lr_scheduler_type="linear",
            improver_steps=1,
            dpo_steps=2,
        ),
        train_dataset=conversational_dataset(8),
        processing_class=tokenizer,
        callbacks=[recorder],
    )
    trainer.sampler = rule_sampler(tokenizer)
    trainer.train()
    assert trainer.phase_callback.phase_history == [IMPROVER, DPO, DPO] * 2
    linear = [1e-3 * (6 - step) / 6 for step in range(6)]  # the schedule's value at each step
    expected = [rate * (10 if phase == IMPROVER else 1) for rate, phase in zip(linear, [IMPROVER, DPO, DPO] * 2)]
    assert recorder.rates == pytest.approx(expected, rel=1e-6)


def test_sample_table_shows_kept_pairs_first(tokenizer):
    """The rows worth reading are those where the improver changed the draft: they come first, in batch order."""
    from trl_sgpo.records import Completion

    texts = ["a", "b", "c", "d"]
    completions = [Completion(tokenizer(t, add_special_tokens=False).input_ids, True) for t in texts]
    prompts = [f"prompt {t}" for t in texts]
    verdicts = ["identical", "kept", "empty", "kept"]
    rows = sample_rows("dpo", prompts, completions, completions, verdicts, tokenizer.decode, 2)
    assert [(row["prompt"], row["kept"], row["response"]) for row in rows] == [
        ("prompt b", "kept", "b"),
        ("prompt d", "kept", "d"),
    ]
    rows = sample_rows("dpo", prompts, completions, completions, ["identical"] * 4, tokenizer.decode, 2)
    assert [row["prompt"] for row in rows] == ["prompt a", "prompt b"]
