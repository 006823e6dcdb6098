"""Shared-prefix packing: every continuation of a prompt scored in one row, the prompt encoded once.

Checked against the separate passes it replaces: per-token log-probabilities and their gradients for every branch
(left-padded prompts of different lengths, branches of different lengths, both attention implementations that take
a 4D mask), and whole next-turn training steps of both phases (loss, gradients, logged statistics). Models where
packing would not be exact fall back to the separate passes.
"""

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM

from trl_sgpo import SGPOTrainer
from trl_sgpo.method.schedule import DPO, IMPROVER
from trl_sgpo.records import Completion
from trl_sgpo.step.scoring import drafts_in_tail

from .helpers import conversational_dataset, make_config, rule_sampler, tiny_model
from .test_next_turn import _batch, _mixed_trainer, _targets


def _assert_close(actual, expected, name: str, **tolerance):
    torch.testing.assert_close(actual, expected, msg=lambda text: f"{name}: {text}", **tolerance)


def _branches(trainer, rows: int) -> list[list[Completion]]:
    """Three branches per prompt: lengths 1 to 9 tokens, different per row and per branch, some without an EOS."""
    vocab = trainer.model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    branches = []
    for k in range(3):
        side = []
        for row in range(rows):
            length = 1 + (row * 3 + k * 5) % 9
            tokens = torch.randint(10, vocab, (length,), generator=generator).tolist()
            side.append(Completion(tokens, ended=(row + k) % 3 != 0))
        branches.append(side)
    return branches


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_forward_equals_the_separate_passes(tmp_path, attention):
    trainer, _ = _mixed_trainer(tmp_path)
    model = trainer.model
    model.set_attn_implementation(attention)
    assert trainer.scorer.packable(model)
    batch = _batch(trainer)
    prompt_ids, prompt_mask = batch.prompt_ids, batch.prompt_mask
    assert prompt_mask.sum(1).unique().numel() > 1 and not prompt_mask[:, 0].all()  # left padding, several lengths
    branches = _branches(trainer, prompt_ids.size(0))
    tokens = [[trainer.layout.completion_tokens(c) for c in side] for side in branches]

    packed = trainer.scorer.pack(prompt_ids, prompt_mask, tokens)
    packed_logps = trainer.scorer.packed_forward(model, packed)
    assert packed.input_ids.size(1) < prompt_ids.size(1) + sum(max(map(len, side)) for side in tokens)
    # gradients of the mean log-probability per token (the scale of the step's losses, where float32 resolves 1e-5)
    count = sum(len(row) for side in tokens for row in side)
    packed_mean = sum((logps.sum() for logps in packed_logps), torch.zeros(())) / count
    packed_grads = torch.autograd.grad(packed_mean, list(model.parameters()))

    separate_sum = torch.zeros(())
    for k, (side, logps) in enumerate(zip(branches, packed_logps)):
        padded = trainer.layout.pad(side)
        ids, mask = padded.ids, padded.mask
        separate = trainer.scorer.forward(model, prompt_ids, prompt_mask, ids, mask) * mask
        assert logps.shape == ids.shape
        _assert_close(logps, separate, atol=1e-5, rtol=1e-6, name=f"branch {k}")
        assert separate.sum(1).lt(0).all()  # real numbers, not zeros from a mask that hides everything
        separate_sum = separate_sum + separate.sum()
    separate_grads = torch.autograd.grad(separate_sum / count, list(model.parameters()))
    for packed_grad, separate_grad in zip(packed_grads, separate_grads):
        torch.testing.assert_close(packed_grad, separate_grad, atol=1e-5, rtol=0)
    assert max(grad.abs().max() for grad in separate_grads) > 0.1  # gradients that a 1e-5 tolerance resolves


def test_packed_next_turn_scores_equal_the_fused_and_separate_passes(tmp_path):
    """`Scorer.packed_scores` (draft, target, rewrite, reference from one pass) against the passes it replaces."""
    trainer, _ = _mixed_trainer(tmp_path, policy_sft_weight=0.5)
    model = trainer.model
    model.eval()
    batch = _batch(trainer)
    prompts = trainer.layout.improver_prompts(batch)
    targets = _targets(trainer, batch)
    chosen = _branches(trainer, len(targets))[0]
    with torch.no_grad():
        padded_targets, pair = trainer.layout.pad(targets), trainer.layout.pad(chosen + batch.drafts)
        scores = trainer.scorer.packed_scores(model, batch, prompts, padded_targets, pair)
        assert scores is not None
        target_ids, target_mask = padded_targets.ids, padded_targets.mask
        tail = max(r + a for r, a in zip(prompts.rejected_lengths, prompts.after_lengths))
        fused = trainer.scorer.forward(model, prompts.ids, prompts.mask, target_ids, target_mask, prompt_tail=tail)
        expected = {
            "rejected": (drafts_in_tail(fused[:, :tail], prompts), batch.drafts),
            "target": (fused[:, tail:], targets),
        }
        for name, side in (("chosen", chosen), ("reference", batch.references)):
            padded = trainer.layout.pad(side)
            expected[name] = (
                trainer.scorer.forward(model, batch.prompt_ids, batch.prompt_mask, padded.ids, padded.mask),
                side,
            )
    for name, (separate, side) in expected.items():
        mask = trainer.layout.pad(side).mask
        value = getattr(scores, name)
        assert value.shape == mask.shape, name
        _assert_close(value * mask, separate * mask, atol=1e-5, rtol=1e-6, name=name)


def _rule_trainer(tmp_path, tokenizer, peft: bool):
    """A tiny random Llama whose drafts and rewrites come from `rule_sampler`: every pair kept, lengths varied."""
    peft_config = None
    if peft:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    config = make_config(
        tmp_path,
        improver_format="next_turn",
        improver_instruction="improve",
        per_device_train_batch_size=8,
        policy_sft_weight=0.5,
        improver_loss_weight=1.0,
        chosen_nll_weight=0.1,
    )
    trainer = SGPOTrainer(
        model=tiny_model(tokenizer),
        args=config,
        train_dataset=conversational_dataset(8),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.reuse_draft_cache = False  # the rule sampler takes no cache
    trainer.sampler = rule_sampler(tokenizer)
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def _step(trainer, phase: str, pack: bool):
    """One training step of ``phase``, packed or not: loss, gradients, statistics, and the forward calls made."""
    trainer.scorer.pack_shared_prefix = pack
    trainer.phase_callback.phase = phase
    calls = {"forward": 0, "packed": 0}
    forward, packed_forward = trainer.scorer.forward, trainer.scorer.packed_forward

    def counting_forward(*args, **kwargs):
        calls["forward"] += 1
        return forward(*args, **kwargs)

    def counting_packed_forward(*args, **kwargs):
        calls["packed"] += 1
        return packed_forward(*args, **kwargs)

    trainer.scorer.forward, trainer.scorer.packed_forward = counting_forward, counting_packed_forward
    trainer._metrics.clear()
    model = trainer.model
    model.zero_grad()
    try:
        loss = trainer.training_step(model, trainer.train_dataset[:8])
    finally:
        del trainer.scorer.forward, trainer.scorer.packed_forward
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss, grads, dict(trainer._metrics), calls


@pytest.mark.parametrize("phase", [DPO, IMPROVER])
@pytest.mark.parametrize("peft", [False, True])
def test_a_packed_next_turn_step_equals_the_unpacked_step(tmp_path, tokenizer, phase, peft):
    trainer = _rule_trainer(tmp_path, tokenizer, peft)
    batch = trainer.draft(trainer.model, trainer.train_dataset[:8])
    assert batch.prompt_mask.sum(1).unique().numel() > 1  # left padding
    assert len({len(draft.token_ids) for draft in batch.drafts}) > 1  # drafts of different lengths
    assert trainer.scorer.packable(trainer.model)

    loss, grads, metrics, calls = _step(trainer, phase, pack=True)
    # one packed pass for the policy (and, in DPO steps, one for the reference model), no separate pass
    assert calls == {"forward": 0, "packed": 2 if phase == DPO else 1}
    unpacked_loss, unpacked_grads, unpacked_metrics, unpacked_calls = _step(trainer, phase, pack=False)
    assert unpacked_calls == {"forward": 4 if phase == DPO else 2, "packed": 0}

    torch.testing.assert_close(loss, unpacked_loss, atol=1e-6, rtol=1e-6)
    assert grads.keys() == unpacked_grads.keys() and grads
    for name, grad in grads.items():
        _assert_close(grad, unpacked_grads[name], atol=1e-6, rtol=1e-5, name=name)
    assert metrics.keys() == unpacked_metrics.keys()
    for name, values in metrics.items():
        expected = torch.tensor(unpacked_metrics[name])
        _assert_close(torch.tensor(values), expected, atol=1e-5, rtol=1e-6, name=name)
    assert metrics["sgpo/policy_sft_loss"][0] > 0 and metrics["sgpo/improver_loss"][0] > 0
    if phase == DPO:
        assert metrics["sgpo/pairs_kept"][0] == 1.0 and metrics["sgpo/dpo_loss"][0] > 0


def test_models_where_packing_is_not_exact_use_the_separate_passes(tmp_path):
    trainer, _ = _mixed_trainer(tmp_path)
    assert trainer.scorer.packable(trainer.model) and trainer.scorer.packs(trainer.model, trainer.max_length)
    assert not trainer.scorer.packs(trainer.model, trainer.max_length + 1)  # the separate passes would cut the prompt
    small = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2))
    assert not trainer.scorer.packable(gpt2)  # learned absolute positions: padding shifts them
    mistral = MistralForCausalLM(MistralConfig(sliding_window=8, **small))
    assert not trainer.scorer.packable(mistral)  # a sliding window the custom mask would drop
    assert trainer.scorer.packable(MistralForCausalLM(MistralConfig(sliding_window=None, **small)))
    flash = copy.deepcopy(trainer.model)
    flash.config._attn_implementation = "flash_attention_2"
    assert not trainer.scorer.packable(flash)  # takes no 4D mask
