"""Resuming from a checkpoint taken in the middle of a phase continues the same run."""

import torch
from transformers import TrainerCallback

from trl_sgpo import SGPOTrainer

from .helpers import conversational_dataset, make_config, tiny_model


def _trainer(tmp_path, tokenizer, output_dir, **overrides):
    config = make_config(
        tmp_path,
        output_dir=str(output_dir),
        improver_steps=2,
        dpo_steps=2,
        max_steps=6,
        per_device_train_batch_size=2,
        save_strategy="steps",
        save_steps=3,
        **overrides,
    )
    return SGPOTrainer(
        model=tiny_model(tokenizer), args=config, train_dataset=conversational_dataset(8), processing_class=tokenizer
    )


def test_resume_mid_phase_matches_the_uninterrupted_run(tmp_path, tokenizer):
    full = _trainer(tmp_path, tokenizer, tmp_path / "full")
    full.train()
    # the checkpoint after step 3 lies inside the DPO phase of steps 3-4
    assert full.phase_callback.phase_history == ["improver", "improver", "dpo", "dpo", "improver", "improver"]

    resumed = _trainer(tmp_path, tokenizer, tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))

    assert resumed.phase_callback.phase_history == full.phase_callback.phase_history
    # the log history holds the checkpoint's first three steps, then the resumed steps 4-6
    resumed_logs = [log for log in resumed.state.log_history if "sgpo/phase" in log]
    full_logs = [log for log in full.state.log_history if "sgpo/phase" in log]
    assert [log["sgpo/phase"] for log in resumed_logs] == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert [log["loss"] for log in resumed_logs] == [log["loss"] for log in full_logs]
    full_weights = dict(full.model.named_parameters())
    for name, parameter in resumed.model.named_parameters():
        torch.testing.assert_close(parameter, full_weights[name], rtol=0, atol=1e-6, msg=name)


def test_reference_model_is_resynced_at_each_dpo_phase_and_saved_in_checkpoints(tmp_path, tokenizer):
    from safetensors.torch import load_file

    trainer = SGPOTrainer(
        model=tiny_model(tokenizer),
        args=make_config(
            tmp_path,
            improver_steps=1,
            dpo_steps=1,
            max_steps=2,
            sync_ref_model_each_dpo_phase=True,
            save_strategy="steps",
            save_steps=2,
        ),
        train_dataset=conversational_dataset(8),
        processing_class=tokenizer,
    )
    initial = {name: p.detach().clone() for name, p in trainer.ref_model.named_parameters()}
    after_improver_step = {}

    def remember(args, state, control, model=None, **kwargs):
        if state.global_step == 1:
            after_improver_step.update({n: p.detach().clone() for n, p in model.named_parameters()})

    callback = type("Remember", (TrainerCallback,), {"on_step_end": lambda self, *a, **k: remember(*a, **k)})()
    trainer.add_callback(callback)
    trainer.train()
    # the DPO phase started at step 2: the reference holds the weights after step 1, not the initial ones
    for name, parameter in trainer.ref_model.named_parameters():
        torch.testing.assert_close(parameter, after_improver_step[name], rtol=0, atol=0)
    assert any(not torch.equal(initial[n], after_improver_step[n]) for n in initial)
    saved = load_file(str(tmp_path / "out" / "checkpoint-2" / "sgpo_ref_model.safetensors"))
    for name, parameter in trainer.ref_model.named_parameters():
        if name in saved:
            torch.testing.assert_close(saved[name], parameter.detach(), rtol=0, atol=0)
