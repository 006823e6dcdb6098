"""Selective logits: the LM head and the log-softmax run only at the positions whose log-probabilities are used.

Checked against the full path it replaces (`Scorer.select_logits = False`: logits at every position from the
first scored one on): per-token log-probabilities and their gradients, in float32 within 1e-5, for left-padded
prompts with a scored prompt tail (`Scorer.forward`), packed rows with branches scored in part
(`Scorer.packed_forward`), the next-turn scores of both phases (`Scorer.packed_scores`), and a LoRA model with its
adapter on and off. Models whose forward does not slice logits with a boolean mask take the full path.
"""

import logging

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from trl_sgpo.step.gathered_log_softmax import gathered_log_softmax
from trl_sgpo.step.scoring import _forward_slices_logits

from .helpers import FLOAT32_REASSOCIATION_RTOL, padded_ids
from .test_next_turn import _batch, _mixed_trainer, _targets
from .test_packing import _branches, _rule_trainer


def _assert_close(actual, expected, name: str):
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0, msg=lambda text: f"{name}: {text}")


def _kept_logits(trainer, model, select: bool, run):
    """``run()`` with selective logits on or off; also returns what each model call was asked to keep."""
    kept = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: kept.append(kwargs.get("logits_to_keep")), with_kwargs=True
    )
    trainer.scorer.select_logits = select
    try:
        return run(), kept
    finally:
        handle.remove()
        trainer.scorer.select_logits = True


def _both_paths(trainer, model, compute):
    """``compute()`` -> tensors of log-probabilities, on the selective and the full path; their gradients too."""
    results = {}
    for select in (True, False):
        values, kept = _kept_logits(trainer, model, select, compute)
        assert kept and all(isinstance(k, torch.Tensor) and k.dtype == torch.bool for k in kept) == select
        total = sum((v.sum() for v in values), torch.zeros(())) / sum(v.numel() for v in values)
        params = [p for p in model.parameters() if p.requires_grad]
        results[select] = (values, torch.autograd.grad(total, params))
    return results


def _check(results, name: str):
    (selected, selected_grads), (full, full_grads) = results[True], results[False]
    for k, (s, f) in enumerate(zip(selected, full)):
        assert s.shape == f.shape
        _assert_close(s, f, f"{name} {k}")
    for s, f in zip(selected_grads, full_grads):
        torch.testing.assert_close(s, f, atol=1e-5, rtol=0)
    assert max(g.abs().max() for g in full_grads) > 0.01  # gradients a 1e-5 tolerance resolves


def test_forward_selects_only_the_scored_positions(tmp_path):
    trainer, _ = _mixed_trainer(tmp_path)
    model = trainer.model
    assert trainer.scorer.selects_logits(model)
    batch = _batch(trainer)
    assert batch.prompt_mask.sum(1).unique().numel() > 1 and not batch.prompt_mask[:, 0].all()  # left padding
    completions = _branches(trainer, batch.prompt_ids.size(0))[0]
    ids, mask = padded_ids(trainer.layout, completions)
    assert not mask.all()  # right padding, not scored
    tail = 5
    tail_mask = torch.rand(batch.prompt_mask[:, -tail:].shape, generator=torch.Generator().manual_seed(0)) < 0.5

    def compute():
        plain = trainer.scorer.forward(model, batch.prompt_ids, batch.prompt_mask, ids, mask)
        tailed = trainer.scorer.forward(
            model, batch.prompt_ids, batch.prompt_mask, ids, mask, prompt_tail=tail, tail_mask=tail_mask
        )
        return [plain * mask, tailed]

    results = _both_paths(trainer, model, compute)
    _check(results, "forward")
    selected = results[True][0][1]
    assert (selected[:, :tail][~tail_mask] == 0).all() and (selected[:, :tail][tail_mask] < 0).all()
    assert (selected[:, tail:][mask.bool()] < 0).all()

    # only the scored positions reach the LM head: one row of logits per real completion token
    _, kept = _kept_logits(trainer, model, True, lambda: compute()[0])
    assert int(kept[0].sum()) == int(mask.sum())


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_forward_with_scored_branches_equals_the_full_path(tmp_path, attention):
    trainer, _ = _mixed_trainer(tmp_path)
    model = trainer.model
    model.set_attn_implementation(attention)
    batch = _batch(trainer)
    branches = _branches(trainer, batch.prompt_ids.size(0))
    tokens = [[trainer.layout.completion_tokens(c) for c in side] for side in branches]
    packed = trainer.scorer.pack(batch.prompt_ids, batch.prompt_mask, tokens)
    width = max(1, max(map(len, tokens[1])))
    scored = torch.arange(width).unsqueeze(0) % 2 == torch.arange(len(tokens[1])).unsqueeze(1) % 2  # a checkerboard
    scored[:, 0] = True  # first tokens: predicted from the prompt's last column, shared by every branch

    results = _both_paths(trainer, model, lambda: trainer.scorer.packed_forward(model, packed, [None, scored, None]))
    _check(results, "branch")
    middle = results[True][0][1]
    lengths = torch.tensor([len(row) for row in tokens[1]]).unsqueeze(1)
    real = torch.arange(width).unsqueeze(0) < lengths
    assert (middle[real & ~scored] == 0).all() and (middle[real & scored] < 0).all()


@pytest.mark.parametrize("score_rejected", [True, False])
def test_packed_next_turn_scores_equal_the_full_path(tmp_path, score_rejected):
    trainer, _ = _mixed_trainer(tmp_path, policy_sft_weight=0.5)
    model = trainer.model
    batch = _batch(trainer)
    prompts = trainer.layout.improver_prompts(batch)
    targets = _targets(trainer, batch)
    chosen = _branches(trainer, len(targets))[0]
    names = ["target", "chosen", "reference"] + (["rejected"] if score_rejected else [])

    def compute():
        padded_targets, pair = trainer.layout.pad(targets), trainer.layout.pad(chosen + batch.drafts)
        scores = trainer.scorer.packed_scores(model, batch, prompts, padded_targets, pair, score_rejected)
        assert (scores.rejected is not None) == score_rejected
        return [getattr(scores, name) for name in names]

    _check(_both_paths(trainer, model, compute), "scores")


@pytest.mark.parametrize("phase_step", ["dpo", "improver"])
def test_lora_steps_equal_the_full_path(tmp_path, tokenizer, phase_step):
    """A PEFT model (the reference model is its base with the adapter disabled): whole steps, loss and gradients."""
    trainer = _rule_trainer(tmp_path, tokenizer, peft=True)
    model = trainer.model
    assert trainer.scorer.selects_logits(model) and trainer.scorer.selects_logits(
        trainer.accelerator.unwrap_model(model)
    )
    from trl_sgpo.method.schedule import DPO, IMPROVER

    results = {}
    for select in (True, False):
        trainer.scorer.select_logits = select
        trainer.phase_callback.phase = DPO if phase_step == "dpo" else IMPROVER
        trainer._metrics.clear()
        model.zero_grad()
        torch.manual_seed(0)
        loss = trainer.training_step(model, trainer.train_dataset[:8])
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[select] = (loss, grads, dict(trainer._metrics))
    trainer.scorer.select_logits = True
    (loss, grads, metrics), (full_loss, full_grads, full_metrics) = results[True], results[False]
    torch.testing.assert_close(loss, full_loss, atol=1e-5, rtol=0)
    assert grads.keys() == full_grads.keys() and any("lora" in name for name in grads)
    for name, grad in grads.items():
        _assert_close(grad, full_grads[name], name)
    for name, values in metrics.items():
        _assert_close(torch.tensor(values), torch.tensor(full_metrics[name]), name)
    if phase_step == "dpo":  # the reference model's log-probabilities went through the selective path too
        assert metrics["logps/rejected"][0] < 0 and "objective/kl" in metrics


def test_lora_log_probabilities_with_the_adapter_on_and_off(tmp_path, tokenizer):
    trainer = _rule_trainer(tmp_path, tokenizer, peft=True)
    model = trainer.model
    batch = trainer.draft(model, trainer.train_dataset[:8])
    ids, mask = padded_ids(trainer.layout, batch.drafts)

    def compute():
        with model.disable_adapter(), torch.no_grad():
            base = trainer.scorer.forward(model, batch.prompt_ids, batch.prompt_mask, ids, mask) * mask
        adapted = trainer.scorer.forward(model, batch.prompt_ids, batch.prompt_mask, ids, mask) * mask
        return [adapted, base]

    results = _both_paths(trainer, model, compute)
    _check(results, "lora")
    adapted, base = results[True][0]
    assert (adapted - base).abs().max() > 1e-3  # the adapter changes the log-probabilities: both were computed


def test_gathered_log_softmax_equals_log_softmax_and_gather():
    generator = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(40, 70, generator=generator, dtype=torch.float64)).requires_grad_()
    source = torch.tensor([0, 0, 3, 39, 7, 7, 7, 20])  # rows picked several times, rows never picked
    tokens = torch.tensor([5, 6, 0, 69, 1, 1, 2, 33])
    weights = torch.randn(len(source), generator=generator, dtype=torch.float64)
    picked = gathered_log_softmax(logits, source, tokens)
    expected = logits.log_softmax(-1)[source, tokens]
    torch.testing.assert_close(picked, expected)
    (grad,) = torch.autograd.grad((picked * weights).sum(), logits)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), logits)
    torch.testing.assert_close(grad, expected_grad)
    # half precision: normalised in float32, returned in the logits' dtype
    half = gathered_log_softmax(logits.detach().bfloat16(), source, tokens)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.double(), expected.detach(), atol=0.1, rtol=0.02)


def test_models_that_do_not_slice_logits_take_the_full_path(tmp_path, caplog):
    trainer, _ = _mixed_trainer(tmp_path)
    assert _forward_slices_logits(type(trainer.model))

    class OwnHead(GPT2LMHeadModel):
        def forward(self, input_ids=None, attention_mask=None, logits_to_keep=0, **kwargs):
            hidden = self.transformer(input_ids, attention_mask=attention_mask).last_hidden_state
            return type("Output", (), {"logits": self.lm_head(hidden[:, -logits_to_keep:])})()

    assert not _forward_slices_logits(OwnHead)
    model = OwnHead(GPT2Config(vocab_size=trainer.model.config.vocab_size, n_embd=16, n_layer=1, n_head=2)).eval()
    with caplog.at_level(logging.WARNING, logger="trl_sgpo.step.scoring"):
        assert not trainer.scorer.selects_logits(model)
        assert not trainer.scorer.selects_logits(model)
    assert caplog.text.count("Selective logits are off (OwnHead.forward does not slice logits by a mask)") == 1
    batch = _batch(trainer)
    ids, mask = padded_ids(trainer.layout, batch.drafts)
    logps = trainer.scorer.forward(model, batch.prompt_ids, batch.prompt_mask, ids, mask)
    inputs = torch.cat((batch.prompt_ids, ids), 1), torch.cat((batch.prompt_mask, mask), 1)
    full = model(*inputs, logits_to_keep=ids.size(1) + 1).logits[:, :-1]
    _assert_close(logps * mask, full.log_softmax(-1).gather(2, ids.unsqueeze(2)).squeeze(2) * mask, "own head")
    trainer.scorer.select_logits = False
    assert not trainer.scorer.selects_logits(trainer.model)


def test_a_padded_block_over_max_length_cuts_only_rows_that_are_longer(tmp_path, caplog):
    # The prompt block is as wide as its longest prompt and the completion block as its longest reference; cutting
    # the padded block from the left used to cut the start of the longest prompt whenever another row's reference
    # was long, though that row fit on its own.
    trainer, _ = _mixed_trainer(tmp_path)
    batch = _batch(trainer)
    ids, mask = padded_ids(trainer.layout, batch.references)
    lengths = batch.prompt_mask.sum(dim=1) + mask.sum(dim=1)
    full = trainer.scorer.forward(trainer.model, batch.prompt_ids, batch.prompt_mask, ids, mask)
    trainer.scorer.max_length = int(lengths.max()) - 3
    fits = lengths <= trainer.scorer.max_length
    assert batch.prompt_ids.size(1) + ids.size(1) > int(lengths.max()) and fits.any() and not fits.all()
    with caplog.at_level(logging.WARNING, logger="trl_sgpo.step.scoring"):
        for _ in range(2):
            cut = trainer.scorer.forward(trainer.model, batch.prompt_ids, batch.prompt_mask, ids, mask)
    assert caplog.text.count("first 3 prompt tokens are cut") == 1  # the longest row, said once
    # rows that fit keep every token: the same log-probabilities (moved by padding only; RoPE is shift-invariant)
    torch.testing.assert_close(cut[fits], full[fits], rtol=FLOAT32_REASSOCIATION_RTOL, atol=1e-5)
    assert not torch.allclose(cut[~fits], full[~fits], atol=1e-3)  # the longest lost the start of its prompt
