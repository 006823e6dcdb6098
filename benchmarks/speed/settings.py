"""The speed benchmark's settings: the arms, the model sizes, and one configuration's `Settings`; the file name its
report is written to."""

from dataclasses import dataclass

import torch


ARMS = ("online_dpo", "online_dpo_rm", "sgpo_dpo", "sgpo_improver", "sgpo_dpo_template", "sgpo_improver_template")
BASELINE = "online_dpo"  # the free-reward run
REWARD_MODEL_BASELINE = "online_dpo_rm"
COMPONENTS = ("step", "training_step", "generation", "forward_backward", "reward", "optimizer", "rest")
SGPO_FORMATS = {  # arm -> (phase, improver_format)
    "sgpo_dpo": ("dpo", "next_turn"),
    "sgpo_improver": ("improver", "next_turn"),
    "sgpo_dpo_template": ("dpo", "template"),
    "sgpo_improver_template": ("improver", "template"),
}
MEMORY_MODES = ("full", "lora")
# hidden size, layers, attention heads (intermediate size = 2 x hidden, as in `trl_sgpo.toy.build_tiny_model`)
MODEL_SIZES = {
    "tiny": (64, 2, 2),
    "small": (256, 4, 4),
    "medium": (768, 12, 12),
    "large": (2048, 16, 16),
}
SMOLLM2 = "smollm2"  # SmolLM2-135M-Instruct: its weights, tokenizer and chat template (benchmarks/smollm2.py)
SHORT_TEMPLATE = "{prompt}\ndraft: {response}\nfix:"


@dataclass
class Settings:
    """One configuration: device, model, batch, lengths, repeats, tokenizer, what is timed."""

    device: str = "cpu"
    model_size: str = "small"
    batch_size: int = 8
    prompt_length: int = 64
    max_new_tokens: int = 32
    repeats: int = 12
    warmup: int = 2
    memory_steps: int = 2
    threads: int = 1
    seed: int = 0
    improver_template: str = "default"
    tokenizer: str = "bpe"
    gradient_checkpointing: bool = False
    skip_memory: bool = False
    lengths: str = "fixed"  # "fixed": every completion max_new_tokens long; "sampled": as sampled, ending at EOS
    lora: bool = False  # the timed arms train a LoRA adapter (memory measures both modes anyway)
    arms: tuple[str, ...] = ARMS

    @property
    def real_model(self) -> bool:
        return self.model_size == SMOLLM2

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.device == "cuda" else torch.float32


def improver_template(settings: Settings) -> str:
    from trl_sgpo.config import DEFAULT_IMPROVER_TEMPLATE

    return DEFAULT_IMPROVER_TEMPLATE if settings.improver_template == "default" else SHORT_TEMPLATE


def results_name(settings: Settings) -> str:
    """One configuration's file name: ``speed_<size>`` for a random model (``speed_small``), ``speed_smollm2`` for
    SmolLM2 with LoRA (its headline), with ``_full`` for SmolLM2 with full fine-tuning and ``_gc`` with gradient
    checkpointing, so that each configuration keeps its own report (``speed`` is the suite's, `suite`)."""
    name = f"speed_{settings.model_size}"
    if settings.real_model and not settings.lora:
        name += "_full"
    return name + ("_gc" if settings.gradient_checkpointing else "")
