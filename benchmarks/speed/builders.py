"""The speed benchmark's model and trainers: a random Llama of the configuration's size (or SmolLM2), a reward model
of its size, the settings every arm shares, and one trainer per arm prepared for `training_step` calls."""

import contextlib
import copy
import math
import warnings
from typing import Any

import torch

from benchmarks.real.smollm2 import smollm2_model_dir
from benchmarks.speed.data import rendered_prompt_lengths, token_count
from benchmarks.speed.settings import MODEL_SIZES, REWARD_MODEL_BASELINE, SGPO_FORMATS, Settings, improver_template


def max_length(settings: Settings, tokenizer) -> int:
    """A `max_length` that truncates nothing in any arm: the prompt, plus what SGPO's length budget reserves beyond
    it (`PromptBudget`: the improver template with its chat markup, a draft and a rewrite), plus a margin."""
    from trl_sgpo.data.prompt_lengths import PromptBudget

    template_tokens = token_count(tokenizer, improver_template(settings)) + 16  # 16: the chat markup around it
    reserved = -PromptBudget(0, template_tokens, settings.max_new_tokens, settings.max_new_tokens).available
    longest = max(rendered_prompt_lengths(settings, tokenizer))
    return 64 * math.ceil((longest + reserved + 8) / 64)


def build_model(settings: Settings, tokenizer, meta: bool = False):
    """The benchmark's model on its device and dtype (``meta``: shapes only, to count parameters)."""
    from trl_sgpo.toy import build_tiny_model

    if settings.real_model:
        from transformers import AutoConfig, AutoModelForCausalLM

        folder = smollm2_model_dir()
        if meta:
            with torch.device("meta"):
                return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
        return AutoModelForCausalLM.from_pretrained(folder, dtype=settings.dtype).to(settings.device)
    hidden, layers, heads = MODEL_SIZES[settings.model_size]
    with torch.device("meta") if meta else contextlib.nullcontext():
        model = build_tiny_model(
            tokenizer,
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads,
            max_positions=max_length(settings, tokenizer),
            seed=settings.seed,
        )
    return model if meta else model.to(device=settings.device, dtype=settings.dtype)


def reward_model(settings: Settings, tokenizer, policy):
    """A reward model of the policy's own size: a sequence-classification head (one score) on the same config."""
    from transformers import LlamaForSequenceClassification

    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(settings.seed + 1)
    model = LlamaForSequenceClassification(config)
    return model.to(device=settings.device, dtype=settings.dtype).eval()


def cheap_reward(completions: list, **kwargs: Any) -> list[float]:
    """OnlineDPO's reward: shorter is better. Costs microseconds, so scoring does not weigh on the comparison."""
    return [-float(len(str(completion))) for completion in completions]


def common_config(settings: Settings, tokenizer, output_dir: str) -> dict[str, Any]:
    """The settings every arm shares."""
    eos = tokenizer.eos_token_id
    n = settings.max_new_tokens
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=settings.batch_size,
        max_new_tokens=n,
        max_length=max_length(settings, tokenizer),
        # "fixed": exactly n tokens per completion in every arm (no EOS before the last position, EOS forced at it);
        # "sampled": as the model samples them, ending at its EOS (the chat template's end of turn), at most n.
        generation_kwargs=(
            {"min_new_tokens": n - 1, "max_new_tokens": n, "forced_eos_token_id": eos}
            if settings.lengths == "fixed"
            else {}
        ),
        learning_rate=1e-5,
        max_grad_norm=1.0,
        report_to="none",
        save_strategy="no",
        logging_steps=10**9,
        seed=settings.seed,
        dataloader_num_workers=0,
        use_cpu=settings.device == "cpu",
        bf16=settings.device == "cuda",
        gradient_checkpointing=settings.gradient_checkpointing,
    )


def lora_config():
    from peft import LoraConfig

    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    return LoraConfig(r=8, lora_alpha=16, target_modules=targets, task_type="CAUSAL_LM")


def import_trainers() -> None:
    """Import everything the trainers need (TRL, SGPO, PEFT)."""
    import peft  # noqa: F401
    from trl.experimental.online_dpo import OnlineDPOTrainer  # noqa: F401

    import trl_sgpo  # noqa: F401


def build_trainer(arm: str, settings: Settings, tokenizer, model, dataset, output_dir: str, peft: bool):
    """One trainer of ``arm`` on ``model``, prepared like `Trainer.train` does, ready for `training_step` calls."""
    peft_config = lora_config() if peft else None
    common = common_config(settings, tokenizer, output_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if arm in ("online_dpo", REWARD_MODEL_BASELINE):
            from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

            with_model = arm == REWARD_MODEL_BASELINE
            trainer = OnlineDPOTrainer(
                model=model,
                reward_funcs=reward_model(settings, tokenizer, model) if with_model else cheap_reward,
                reward_processing_classes=tokenizer if with_model else None,
                args=OnlineDPOConfig(**common),
                train_dataset=dataset,
                processing_class=tokenizer,
                peft_config=peft_config,
            )
        else:
            from trl_sgpo import SGPOConfig, SGPOTrainer

            expected, improver_format = SGPO_FORMATS[arm]
            schedule = (
                {"improver_warmup_steps": 0, "improver_steps": 0, "dpo_steps": 1}  # whatever the default warm-up
                if expected == "dpo"
                # the improver step that samples its drafts (the default Step 1 samples a pool once, up front)
                else {
                    "improver_warmup_steps": 10**9,
                    "improver_steps": 1,
                    "dpo_steps": 1,
                    "improver_warmup_drafts": "fresh",
                }
            )
            config = SGPOConfig(
                **common, **schedule, improver_format=improver_format, improver_template=improver_template(settings)
            )
            trainer = SGPOTrainer(
                model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
            )
            if trainer.phase_callback.phase != expected:
                raise RuntimeError(f"{arm}: the schedule gives a {trainer.phase_callback.phase} step")
    # What `Trainer._prepare_for_training` does on one device: optimizer, then accelerate's wrapping (autocast).
    trainer.create_optimizer()
    trainer.model_wrapped, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def batches(dataset, batch_size: int) -> list[dict[str, list]]:
    """Collated batches as the trainers' collator hands them over: columns of lists."""
    rows = dataset.to_list()
    return [
        {key: [row[key] for row in rows[i : i + batch_size]] for key in rows[0]}
        for i in range(0, len(rows) - batch_size + 1, batch_size)
    ]
