"""The DPO step's loss against a hand computation on fixed pairs."""

import math

import pytest
import torch
import torch.nn.functional as F

from trl_sgpo import SGPOTrainer
from trl_sgpo.records import Completion

from .helpers import conversational_dataset, make_config, prompt_texts


def _fixed_sampler(policy: dict[str, str], improver: dict[str, str], tokenizer):
    """Replace sampling by fixed texts keyed on the last user message, so the pairs are known in advance."""

    def sample(model, prompt_ids, prompt_mask, role, cache=None, **kwargs):
        table = policy if role == "policy" else improver
        out = []
        for text in prompt_texts(tokenizer, prompt_ids, prompt_mask):
            key = next(k for k in table if k in text)
            out.append(Completion(tokenizer(table[key], add_special_tokens=False)["input_ids"], ended=True))
        return out

    return sample


def _sequence_logp(model, tokenizer, prompt_text: str, completion: str) -> torch.Tensor:
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logps = model(ids).logits.log_softmax(-1)[0, len(prompt_ids) - 1 : -1]
    return logps.gather(-1, torch.tensor(completion_ids)[:, None]).sum()


def _trainer(tmp_path, tokenizer, model, **overrides):
    config = make_config(tmp_path, improver_steps=0, dpo_steps=1, improver_loss_weight=0.0, **overrides)
    trainer = SGPOTrainer(
        model=model, args=config, train_dataset=conversational_dataset(2), processing_class=tokenizer
    )
    trainer.current_gradient_accumulation_steps = 1
    with torch.no_grad():  # make the policy differ from its frozen reference copy
        generator = torch.Generator().manual_seed(1)
        for parameter in trainer.model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return trainer


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
@pytest.mark.parametrize("nll_weight", [0.0, 0.5])
def test_dpo_loss_matches_hand_computation(tmp_path, tokenizer, model, loss_type, nll_weight):
    beta = 0.3
    trainer = _trainer(tmp_path, tokenizer, model, beta=beta, loss_type=loss_type, chosen_nll_weight=nll_weight)
    drafts = {"reverse abc": "cbx", "reverse hello": "olleb"}
    rewrites = {"reverse abc": "cba", "reverse hello": "olleh"}
    trainer.sampler = _fixed_sampler(drafts, rewrites, tokenizer)
    rows = conversational_dataset(2)
    inputs = {"prompt": rows["prompt"], "completion": rows["completion"]}

    loss = trainer.training_step(trainer.model, inputs)

    expected = []
    for row in rows:
        key = row["prompt"][-1]["content"]
        prompt_text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        chosen = _sequence_logp(trainer.model, tokenizer, prompt_text, rewrites[key])
        rejected = _sequence_logp(trainer.model, tokenizer, prompt_text, drafts[key])
        chosen_ref = _sequence_logp(trainer.ref_model, tokenizer, prompt_text, rewrites[key])
        rejected_ref = _sequence_logp(trainer.ref_model, tokenizer, prompt_text, drafts[key])
        logit = (chosen - rejected) - (chosen_ref - rejected_ref)
        value = -F.logsigmoid(beta * logit) if loss_type == "sigmoid" else (logit - 1 / (2 * beta)) ** 2
        value = value - nll_weight * chosen / (len(rewrites[key]) + 1)
        expected.append(value)
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5, abs=1e-6)
    assert not math.isclose(loss.item(), math.log(2), rel_tol=1e-3)  # the policy really differs from the reference


def test_dropped_pairs_contribute_zero(tmp_path, tokenizer, model):
    trainer = _trainer(tmp_path, tokenizer, model, beta=0.1)
    drafts = {"reverse abc": "cbx", "reverse hello": "olleh"}
    rewrites = {"reverse abc": "cba", "reverse hello": "olleh"}  # second pair is identical: dropped
    trainer.sampler = _fixed_sampler(drafts, rewrites, tokenizer)
    rows = conversational_dataset(2)
    loss = trainer.training_step(trainer.model, {"prompt": rows["prompt"], "completion": rows["completion"]})

    prompt_text = tokenizer.apply_chat_template(rows[0]["prompt"], tokenize=False, add_generation_prompt=True)
    logit = (
        _sequence_logp(trainer.model, tokenizer, prompt_text, "cba")
        - _sequence_logp(trainer.model, tokenizer, prompt_text, "cbx")
        - _sequence_logp(trainer.ref_model, tokenizer, prompt_text, "cba")
        + _sequence_logp(trainer.ref_model, tokenizer, prompt_text, "cbx")
    )
    # a sum over kept pairs divided by the 2 prompts of the batch
    assert loss.item() == pytest.approx((-F.logsigmoid(0.1 * logit) / 2).item(), rel=1e-5)
    assert trainer._metrics["sgpo/pairs_identical"] == [0.5]


def test_a_batch_with_every_pair_dropped_does_not_crash_and_is_counted(tmp_path, tokenizer, model):
    trainer = _trainer(tmp_path, tokenizer, model)
    same = {"reverse abc": "cba", "reverse hello": "olleh"}
    trainer.sampler = _fixed_sampler(same, same, tokenizer)
    rows = conversational_dataset(2)
    loss = trainer.training_step(trainer.model, {"prompt": rows["prompt"], "completion": rows["completion"]})
    assert loss.item() == 0.0
    assert trainer._metrics["sgpo/empty_batches"] == [1.0]
    assert trainer._metrics["sgpo/pairs_kept"] == [0.0]
    assert math.isnan(trainer._metrics["rewards/chosen"][-1])  # no kept pair: the key stays, as NaN
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert grads and all(torch.count_nonzero(g) == 0 for g in grads)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_preference_loss_is_the_pure_formula(loss_type):
    from trl_sgpo.method.objectives import preference_loss

    chosen, rejected = torch.tensor([-3.0, -1.0]), torch.tensor([-4.0, -0.5])
    ref_chosen, ref_rejected = torch.tensor([-3.5, -1.2]), torch.tensor([-3.9, -0.7])
    beta = 0.2
    losses = preference_loss(chosen, rejected, ref_chosen, ref_rejected, beta, loss_type)
    for i in range(2):
        logit = (chosen[i] - rejected[i]).item() - (ref_chosen[i] - ref_rejected[i]).item()
        if loss_type == "sigmoid":
            expected = math.log1p(math.exp(-beta * logit))
        else:
            expected = (logit - 1 / (2 * beta)) ** 2
        assert losses[i].item() == pytest.approx(expected, rel=1e-6)


def test_preference_loss_rejects_an_unknown_type():
    from trl_sgpo.method.objectives import preference_loss

    zero = torch.zeros(1)
    with pytest.raises(ValueError, match="Unknown loss_type 'hinge'"):
        preference_loss(zero, zero, zero, zero, 0.1, "hinge")
