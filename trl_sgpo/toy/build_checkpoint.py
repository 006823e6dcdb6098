"""Build the toy world's starting checkpoint: a tiny policy, supervised on its own surface form, stopped early.

    python -m trl_sgpo.toy.build_checkpoint --output_dir trl_sgpo/toy/checkpoint --seed 0

The policy is trained on train-split prompts of both regimes, with answers in the *policy* form (``a) x; b) y``
in the shifted regime), loss on the completion only, EOS at the end of each answer. Training stops after a
fixed, small budget, so the policy is deliberately imperfect and there is room to improve: the starting point of
an alignment run, like the SFT model of the paper. Everything is seeded and runs deterministically on CPU in a
few minutes. The held-out (test split) scores are written to ``world.json`` beside the model and tokenizer.
"""

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import PreTrainedTokenizerBase

from .model import build_tiny_model
from .tasks import REGIMES, generate_examples
from .tokenizer import build_char_tokenizer
from .world import evaluate_model, make_dataset


# The checkpoint's SFT prompts are drawn with seed ``SFT_SEED_OFFSET + seed``: a different sample of the train split
# from ``make_dataset(..., seed=s)`` for small ``s``, the prompts an alignment run uses.
SFT_SEED_OFFSET = 1000
# The fixed held-out set the stored scores refer to.
HELD_OUT = {"split": "test", "num_examples": 800, "seed": 0}


@dataclass
class BuildConfig:
    """Hyperparameters of the build. The defaults give the shipped checkpoint."""

    seed: int = 0
    steps: int = 600  # optimizer steps; each step is one batch of one regime, the regimes alternate
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0


def _encode(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids and labels of one conversation, rendered by the chat template; labels only on the completion."""
    prompt_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False).input_ids
    completion_ids = tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return prompt_ids + completion_ids, [-100] * len(prompt_ids) + completion_ids


def _collate(encoded: list[tuple[list[int], list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch of (ids, labels)."""
    length = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), length), pad_token_id)
    labels = torch.full((len(encoded), length), -100)
    attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
    for row, (ids, labs) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def _batches(config: BuildConfig, tokenizer: PreTrainedTokenizerBase) -> list[dict[str, torch.Tensor]]:
    """One batch per step, alternating the regimes; every training example is used once (no repeats)."""
    per_regime = {regime: math.ceil(config.steps / len(REGIMES)) * config.batch_size for regime in REGIMES}
    examples = {
        regime: generate_examples(regime, "train", n, seed=SFT_SEED_OFFSET + config.seed)
        for regime, n in per_regime.items()
    }
    batches = []
    for step in range(config.steps):
        regime = REGIMES[step % len(REGIMES)]
        start = (step // len(REGIMES)) * config.batch_size
        chunk = examples[regime][start : start + config.batch_size]
        batches.append(
            _collate([_encode(tokenizer, ex.prompt, ex.answer("policy")) for ex in chunk], tokenizer.pad_token_id)
        )
    return batches


def held_out_scores(model: transformers.PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """Exact match and partial credit of ``model`` on the fixed held-out set (``HELD_OUT``) of each regime."""
    scores = {}
    for regime in REGIMES:
        dataset = make_dataset(regime, HELD_OUT["split"], HELD_OUT["num_examples"], seed=HELD_OUT["seed"])
        result = evaluate_model(model, tokenizer, dataset)
        scores[regime] = {key: value for key, value in result.items() if key != "completions"}
    return scores


def build_checkpoint(output_dir: str | Path, config: BuildConfig | None = None, log_every: int = 50) -> dict[str, Any]:
    """Train the starting policy from ``config.seed``; save it with its tokenizer and ``world.json``."""
    config = config or BuildConfig()
    start_time, start_cpu = time.time(), time.process_time()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True)

    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, seed=config.seed)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, betas=(0.9, 0.98), weight_decay=config.weight_decay
    )
    scheduler = transformers.get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    for step, batch in enumerate(_batches(config, tokenizer)):
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if log_every and (step + 1) % log_every == 0:
            print(
                f"step {step + 1}/{config.steps} loss {loss.item():.4f} ({time.time() - start_time:.0f}s)", flush=True
            )
    train_seconds = time.time() - start_time

    scores = held_out_scores(model, tokenizer)
    metadata = {
        "description": "Starting policy of trl_sgpo's toy world (python -m trl_sgpo.toy.build_checkpoint).",
        "build_config": asdict(config),
        "sft_data": {"split": "train", "seed": SFT_SEED_OFFSET + config.seed, "reference_style": "policy"},
        "held_out": HELD_OUT,
        "scores": scores,
        "train_seconds": round(train_seconds, 1),
        "build_seconds": round(time.time() - start_time, 1),
        "build_cpu_seconds": round(time.process_time() - start_cpu, 1),
        "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    (output_dir / "world.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return metadata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    defaults = BuildConfig()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name}", type=type(value), default=value)
    args = vars(parser.parse_args())
    output_dir = args.pop("output_dir")
    metadata = build_checkpoint(output_dir, BuildConfig(**args))
    for regime, result in metadata["scores"].items():
        print(f"{regime}: exact match {result['exact_match']:.3f}, partial credit {result['partial_credit']:.3f}")
    print(f"built in {metadata['build_seconds']:.0f}s -> {output_dir}")


if __name__ == "__main__":
    main()
