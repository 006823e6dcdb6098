"""The start of the real-model benchmark: SmolLM2-135M-Instruct, SFT on the real task's SFT set to its plateau.

    python benchmarks/real_start.py          # builds once (about 20 min on 2 CPU cores), prints the folder

The paper's regime: every arm of benchmarks/real_quality.py starts from an SFT model trained on the SFT set it then
trains on, until more SFT no longer helps. Here: LoRA (r=16, every linear layer) on the ``train`` split, evaluated
on ``validation`` every ``eval_every`` updates (greedy and sampled accuracy); it stops when an interval gains less
than ``PLATEAU_POINTS`` points of sampled accuracy over the best so far. The adapter is merged and saved as an
ordinary model folder with ``build.json``: the command, the settings, the zero-shot headroom, the validation curve
and the time. It is cached (``$TRL_SGPO_CACHE``, else ``~/.cache/trl_sgpo``, 540 MB), never committed.
"""

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from real_eval import headroom, scores  # noqa: E402
from real_task import Row, make_splits  # noqa: E402
from smollm2 import default_cache_dir, smollm2_model_dir  # noqa: E402


PLATEAU_POINTS = 2.0
END_OF_TURN = "<|im_end|>"


@dataclass
class StartSettings:
    learning_rate: float = 5e-4
    batch_size: int = 16
    lora_r: int = 16
    temperature: float = 1.0  # the benchmark's sampling temperature (as the toy benchmark)
    max_new_tokens: int = 32
    eval_samples: int = 4
    pass_at_k: int = 8
    seed: int = 0
    eval_every: int = 25  # updates between two validation measurements
    max_updates: int = 300
    validation_prompts: int = 96


# ``--quick``'s start (CI): two updates and a tiny measurement; a separate folder, never mistaken for the real one.
QUICK_START = StartSettings(
    batch_size=4, max_new_tokens=8, eval_samples=1, pass_at_k=2, eval_every=2, max_updates=2, validation_prompts=4
)


def lora_config(r: int = 16):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def sft_batch(tokenizer, rows: list[Row]) -> dict[str, torch.Tensor]:
    """The chat-template rendering of prompt + reference, labels on the reference and its end-of-turn token."""
    encoded = []
    for row in rows:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": row.prompt.text}], tokenize=False, add_generation_prompt=True
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(row.reference + END_OF_TURN, add_special_tokens=False)["input_ids"]
        encoded.append((prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))
    width = max(len(ids) for ids, _ in encoded)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in encoded])
    labels = torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in encoded])
    attention_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in encoded])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def start_dir(quick: bool = False) -> Path:
    return default_cache_dir() / ("real-task-start-quick" if quick else "real-task-start")


def build_start(settings: StartSettings, target: Path) -> Path:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    source = smollm2_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source)
    splits = make_splits()
    validation = splits["validation"][: settings.validation_prompts]
    torch.manual_seed(settings.seed)
    zero_shot = headroom(
        model, tokenizer, validation, settings.pass_at_k, settings.temperature, settings.max_new_tokens
    )
    print(f"zero-shot headroom (validation): {zero_shot}", flush=True)
    model = get_peft_model(model, lora_config(settings.lora_r))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)
    train = list(splits["train"])
    random.Random(settings.seed).shuffle(train)
    curve, best, update = [], -math.inf, 0
    while update < settings.max_updates:
        model.train()
        for _ in range(settings.eval_every):
            start = (update * settings.batch_size) % len(train)
            batch = sft_batch(tokenizer, (train + train)[start : start + settings.batch_size])
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            update += 1
        point = scores(
            model, tokenizer, validation, settings.eval_samples, settings.temperature, settings.max_new_tokens
        )
        point = {"updates": update, "loss": loss.item(), **point, "seconds": time.perf_counter() - started}
        curve.append(point)
        print(json.dumps(point), flush=True)
        gain = 100 * point["sampled_accuracy"] - best
        best = max(best, 100 * point["sampled_accuracy"])
        if len(curve) > 1 and gain < PLATEAU_POINTS:
            break
    merged = model.merge_and_unload()
    torch.manual_seed(settings.seed)
    plateau = headroom(
        merged, tokenizer, validation, settings.pass_at_k, settings.temperature, settings.max_new_tokens
    )
    partial = target.with_name(target.name + ".partial")
    merged.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    trace = {
        "command": "python benchmarks/real_start.py" + (" --quick" if settings == QUICK_START else ""),
        "settings": asdict(settings),
        "source": "SmolLM2-135M-Instruct (benchmarks/smollm2.py)",
        "sft_set_size": len(train),
        "zero_shot_headroom": zero_shot,
        "curve": curve,
        "headroom": plateau,
        "seconds": time.perf_counter() - started,
        "plateau_rule": f"stop when {settings.eval_every} more updates gain < {PLATEAU_POINTS} points of sampled "
        f"accuracy over the best so far (at most {settings.max_updates} updates)",
    }
    (partial / "build.json").write_text(json.dumps(trace, indent=1))
    partial.rename(target)
    return target


def real_start_dir(quick: bool = False) -> Path:
    """The start's folder, built once and cached (``quick``: CI's two-update stand-in)."""
    target = start_dir(quick)
    if not (target / "build.json").is_file():
        build_start(QUICK_START if quick else StartSettings(), target)
    return target


if __name__ == "__main__":
    print(real_start_dir(quick="--quick" in sys.argv[1:]))
