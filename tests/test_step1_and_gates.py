"""The method issue's new pieces in a real trainer: Step 1 alone, saved and resumed into Step 2; the keep_plausible
targets in a step; the pair gates counted in a step; the self-sharpening control's pairs."""

import pytest
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM

from trl_sgpo import SGPOTrainer
from trl_sgpo.method.schedule import DPO, IMPROVER

from .helpers import conversational_dataset, make_config, rule_sampler, tiny_model


def _rows(num_rows: int = 4) -> dict:
    rows = conversational_dataset(num_rows)
    return {"prompt": rows["prompt"], "completion": rows["completion"]}


def _trainer(tmp_path, tokenizer, model=None, peft_config=None, **overrides) -> SGPOTrainer:
    trainer = SGPOTrainer(
        model=model if model is not None else tiny_model(tokenizer),
        args=make_config(tmp_path, **overrides),
        train_dataset=conversational_dataset(8),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.current_gradient_accumulation_steps = 1
    trainer.sampler = rule_sampler(tokenizer)  # drafts 'cbax', rewrites 'cba' (the reference)
    return trainer


def test_step_1_alone_saves_a_merged_model_that_step_2_runs_start_from(tmp_path, tokenizer):
    base = tiny_model(tokenizer)
    initial = {name: p.detach().clone() for name, p in base.named_parameters()}
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    step1 = _trainer(
        tmp_path / "step1",
        tokenizer,
        model=base,
        peft_config=lora,
        improver_warmup_only=True,
        improver_warmup_drafts="initial",
        max_steps=3,
        learning_rate=1e-2,
    )
    step1.train()
    assert step1.phase_callback.phase_history == [IMPROVER] * 3  # every step trained the improver
    step1.save_model()
    folder = tmp_path / "step1" / "out"  # the test config's output_dir
    assert (folder / "model.safetensors").is_file() and not (folder / "adapter_config.json").exists()  # merged
    merged = dict(AutoModelForCausalLM.from_pretrained(folder).named_parameters())
    moved = [name for name, value in initial.items() if not torch.equal(merged[name], value)]
    assert any("q_proj" in name for name in moved) and all("q_proj" in n or "v_proj" in n for n in moved)
    # Step 2 from the saved folder: DPO steps only, the folder's weights as the start and the DPO reference.
    step2 = _trainer(
        tmp_path / "step2", tokenizer, model=str(folder), improver_warmup_steps=0, improver_steps=0, max_steps=2
    )
    step2.train()
    assert step2.phase_callback.phase_history == [DPO, DPO]
    reference = dict(step2.ref_model.named_parameters())
    assert all(torch.equal(reference[name], value) for name, value in merged.items())


def test_keep_plausible_targets_keep_drafts_the_initial_policy_finds_plausible(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, improver_target="keep_plausible", improver_steps=1, dpo_steps=0)
    records = []
    trainer.step_listeners.append(records.append)
    layout = trainer.layout
    batch = trainer.draft(trainer.model, _rows())
    drafts, references = trainer.improver_loss.plausibility(batch)
    trainer.training_step(trainer.model, _rows())
    targets = [target.token_ids for target in records[-1].targets]
    for draft, reference, target, draft_logp, reference_logp in zip(
        batch.drafts, batch.references, targets, drafts, references
    ):
        expected = draft.token_ids if draft_logp >= reference_logp else reference.token_ids
        assert target == expected
    # the initial policy's numbers are the reference model's, per token, over the draft's tokens and end of turn
    rows = layout.pad(batch.drafts)
    with torch.no_grad():
        logps = trainer.scorer.forward(trainer.ref_model, batch.prompt_ids, batch.prompt_mask, rows.ids, rows.mask)
    expected = ((logps * rows.mask).sum(1) / rows.mask.sum(1)).tolist()
    assert drafts == pytest.approx(expected, abs=1e-5)
    assert records[-1].stats["sgpo/targets_kept"] == 1.0


def test_a_gated_step_drops_and_counts_the_pairs_the_gate_refuses(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, pair_gate="reference_margin", pair_gate_margin=1e9, improver_steps=0)
    records = []
    trainer.step_listeners.append(records.append)
    trainer.training_step(trainer.model, _rows())
    record = records[-1]
    assert record.pair_verdicts == ["gated"] * 4  # no rewrite is a billion nats per token more plausible
    assert record.stats["sgpo/pairs_gated"] == 1.0 and record.stats["sgpo/pairs_kept"] == 0.0
    open_gate = _trainer(
        tmp_path / "open", tokenizer, pair_gate="reference_margin", pair_gate_margin=-1e9, improver_steps=0
    )
    open_gate.step_listeners.append(records.append)
    open_gate.training_step(open_gate.model, _rows())
    assert records[-1].pair_verdicts == ["kept"] * 4 and records[-1].stats["sgpo/pairs_gated"] == 0.0


def test_the_self_sharpening_control_pairs_the_greedy_answer_against_the_sample(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, pair_source="self_sharpen")
    assert trainer.phase_callback.skip_improver  # no improver role
    roles, sample = [], trainer.sampler

    def spy(model, prompt_ids, prompt_mask, role, cache=None, **kwargs):
        roles.append(role)
        return sample(model, prompt_ids, prompt_mask, "improver" if role == "eval" else role)

    trainer.sampler = spy
    records = []
    trainer.step_listeners.append(records.append)
    trainer.training_step(trainer.model, _rows())
    assert roles == ["policy", "eval"]  # the sample, then the greedy answer
    assert records[-1].rewrites is None and records[-1].pair_verdicts == ["kept"] * 4
