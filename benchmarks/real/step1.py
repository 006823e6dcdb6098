"""SGPO's Step 1 on the real task, as the paper's stage of its own: built once per seed and target, cached.

The start (benchmarks/real/start.py) answers ``rows`` training prompts once (its sampled drafts, the next-turn
format), and the improver is trained on those drafts for one pass with its own learning rate, the policy's SFT loss
on the references mixed in (`SGPOConfig(improver_warmup_only=True, improver_warmup_drafts="initial")`, a fresh LoRA
adapter, merged when saved). Every SGPO arm's Step 2 starts from the saved folder; the probe (benchmarks/real/
probe.py) reads its rewrites. ``build.json`` holds the settings, the trainer's logs and the seconds Step 1 took. It is
cached (``$TRL_SGPO_CACHE``, else ``~/.cache/trl_sgpo``) in a folder named after its settings and the start.
"""

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.real.smollm2 import default_cache_dir
from benchmarks.real.start import lora_config, real_start_dir
from benchmarks.real.task import conversational, make_splits


@dataclass(frozen=True)
class Step1Settings:
    rows: int = 384  # training prompts Step 1 drafts once and trains on, one pass
    batch_size: int = 16
    learning_rate: float = 3e-4  # Step 1's own rate (measured: at 1e-5 the improver stayed untrained)
    target: str = "keep_plausible"  # SGPOConfig.improver_target
    temperature: float = 1.0  # the drafts' sampling temperature (the benchmark's)
    max_new_tokens: int = 24
    seed: int = 0
    policy_sft_target: str = "reference"  # SGPOConfig.policy_sft_target: what the policy's SFT term trains on


QUICK_STEP1 = Step1Settings(rows=8, batch_size=4, max_new_tokens=8)


def step1_train_rows(settings: Step1Settings) -> list[dict]:
    """Step 1's rows: the first ``rows`` of the seed's shuffle of the SFT set (the arms' rows come from the same
    shuffle, so Step 1 covers theirs)."""
    from datasets import Dataset

    rows = Dataset.from_list(conversational(make_splits()["train"])).shuffle(seed=settings.seed)
    return rows.select(range(settings.rows))


def step1_dir(settings: Step1Settings, quick: bool = False) -> Path:
    """The cached Step 1's folder, named after its settings and its start."""
    start = real_start_dir(quick)
    named = asdict(settings)
    if named["policy_sft_target"] == "reference":  # the folder name Step 1 had before the field existed
        del named["policy_sft_target"]
    digest = hashlib.sha256(json.dumps([named, start.name]).encode()).hexdigest()[:8]
    return default_cache_dir() / f"real-task-step1{'-quick' if quick else ''}-{digest}"


def build_step1(settings: Step1Settings, target: Path, quick: bool = False) -> Path:
    """Train Step 1 from the start and save it (merged) to ``target``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_sgpo import SGPOConfig, SGPOTrainer

    started = time.perf_counter()
    start = real_start_dir(quick)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(start), AutoTokenizer.from_pretrained(start)
    torch.manual_seed(settings.seed)
    rows = step1_train_rows(settings)
    partial = target.with_name(target.name + ".partial")
    config = SGPOConfig(
        output_dir=str(partial),
        overwrite_output_dir=True,
        improver_warmup_only=True,
        improver_warmup_drafts="initial",
        improver_target=settings.target,
        policy_sft_target=settings.policy_sft_target,
        improver_format="next_turn",
        per_device_train_batch_size=settings.batch_size,
        num_train_epochs=1,
        learning_rate=settings.learning_rate,
        temperature=settings.temperature,
        max_new_tokens=settings.max_new_tokens,
        max_length=384,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=settings.seed,
        data_seed=settings.seed,
        use_cpu=True,
    )
    trainer = SGPOTrainer(
        model=model, args=config, train_dataset=rows, processing_class=tokenizer, peft_config=lora_config()
    )
    trainer.train()
    trainer.save_model()
    updates = trainer.state.global_step
    build = {
        "command": "built by benchmarks/real_quality.py and benchmarks/pair_probe.py",
        "settings": asdict(settings),
        "start": start.name,
        "updates": updates,
        "logs": trainer.state.log_history,
        "seconds": time.perf_counter() - started,
    }
    (partial / "build.json").write_text(json.dumps(build, indent=1))
    os.replace(partial, target)
    return target


def real_step1_dir(settings: Step1Settings, quick: bool = False) -> Path:
    """Step 1's folder for ``settings``, built once and cached."""
    target = step1_dir(settings, quick)
    if not (target / "build.json").is_file():
        build_step1(settings, target, quick)
    return target
