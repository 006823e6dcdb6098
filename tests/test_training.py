"""Short real training runs: both phases in the scheduled order, real generation, stats, LoRA, SPIN, text data."""

import torch
from peft import LoraConfig

from trl_sgpo import SGPOTrainer

from .helpers import conversational_dataset, make_config, standard_dataset, tiny_model


TRL_STATS = [
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "objective/kl",
    "beta",
]
SGPO_STATS = [
    "sgpo/phase",
    "sgpo/improver_loss",
    "sgpo/pairs_kept",
    "sgpo/pairs_identical",
    "sgpo/pairs_empty",
    "sgpo/pairs_truncated",
    "sgpo/edit_distance",
    "sgpo/response_length",
    "sgpo/improved_length",
    "sgpo/eos_rate",
    "sgpo/improver_eos_rate",
    "sgpo/targets_kept",
    "sgpo/policy_sft_loss",
    "sgpo/rewrite_closer",
]


def _train(tmp_path, tokenizer, dataset=None, peft_config=None, **overrides):
    trainer = SGPOTrainer(
        model=tiny_model(tokenizer),
        args=make_config(tmp_path, **overrides),
        train_dataset=dataset if dataset is not None else conversational_dataset(8),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    return trainer, before


def _logged(trainer, name):
    return [log[name] for log in trainer.state.log_history if name in log]


def test_full_fine_tuning_visits_the_phases_in_order_and_logs_every_stat(tmp_path, tokenizer):
    trainer, before = _train(tmp_path, tokenizer, improver_warmup_steps=1, improver_steps=1, dpo_steps=2, max_steps=7)
    # warm-up I, then cycles of (I, D, D)
    assert trainer.phase_callback.phase_history == ["improver", "improver", "dpo", "dpo", "improver", "dpo", "dpo"]
    assert _logged(trainer, "sgpo/phase") == [0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    missing = [name for name in TRL_STATS + SGPO_STATS if not _logged(trainer, name)]
    assert not missing, f"never logged: {missing}"
    # DPO statistics appear in DPO steps only; the improver loss in every step (mixed into DPO steps by default)
    assert len(_logged(trainer, "sgpo/pairs_kept")) == 4
    assert len(_logged(trainer, "sgpo/improver_loss")) == 7
    changed = [name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])]
    assert len(changed) == len(before)


def test_lora_trains_the_adapter_only_and_uses_the_disabled_adapter_as_reference(tmp_path, tokenizer):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer, before = _train(tmp_path, tokenizer, peft_config=lora, improver_steps=1, dpo_steps=1, max_steps=4)
    assert trainer.ref_model is None
    assert _logged(trainer, "sgpo/phase") == [0.0, 1.0, 0.0, 1.0]
    for name, parameter in trainer.model.named_parameters():
        if "lora_B" in name:
            assert not torch.equal(parameter, before[name]), name
        elif "lora_" not in name:
            assert torch.equal(parameter, before[name]), name
    assert _logged(trainer, "rewards/margins")


def test_spin_pairs_use_the_reference_and_skip_the_improver(tmp_path, tokenizer):
    trainer = SGPOTrainer(
        model=tiny_model(tokenizer),
        args=make_config(tmp_path, pair_source="spin", improver_warmup_steps=2, max_steps=3),
        train_dataset=conversational_dataset(8),
        processing_class=tokenizer,
    )
    roles, sample = [], trainer.sampler

    def recording_sample(model, prompt_ids, prompt_mask, role, cache=None, **kwargs):
        roles.append(role)
        return sample(model, prompt_ids, prompt_mask, role, cache)

    trainer.sampler = recording_sample
    trainer.train()
    assert trainer.phase_callback.phase_history == ["dpo", "dpo", "dpo"]
    assert roles == ["policy"] * 3  # the improver never generates
    assert not _logged(trainer, "sgpo/improver_loss")
    assert _logged(trainer, "rewards/chosen")
    # the references (3-6 characters) differ from the untrained policy's samples
    assert min(_logged(trainer, "sgpo/edit_distance")) > 0


def test_standard_text_data_trains(tmp_path, tokenizer):
    trainer, _ = _train(tmp_path, tokenizer, dataset=standard_dataset(8), max_steps=2)
    assert _logged(trainer, "sgpo/phase") == [0.0, 1.0]
    assert _logged(trainer, "sgpo/improver_loss")
