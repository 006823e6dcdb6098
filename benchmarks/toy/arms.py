"""The toy quality benchmark's arms on the built-in verifiable world: what every arm shares (`Settings`), the SFT set
they train on, one run (`run_job`) and the scores of a model (greedy, and sampled at the training temperature)."""

import json
import math
from dataclasses import dataclass

import torch

from benchmarks.protocol.arms import load_start, run_sgpo, supervised_updates, train_arm
from benchmarks.protocol.runs import Job, RunResult
from trl_sgpo.toy import (
    TOY_CHECKPOINT_DIR,
    TOY_IMPROVER_INSTRUCTION,
    TOY_IMPROVER_TEMPLATE,
    evaluate_model,
    make_dataset,
    toy_checkpoint_metadata,
)
from trl_sgpo.toy.build_checkpoint import collate_conversations, encode_conversation
from trl_sgpo.toy.checker import check_answer
from trl_sgpo.toy.world import pass_at_k


# arm -> (method whose learning rate it uses, SGPOConfig overrides or None for a non-SGPO arm)
ARMS: dict[str, tuple[str, dict | None]] = {
    "sft": ("sft", None),
    "spin": ("spin", {"pair_source": "spin"}),
    "online_dpo_oracle": ("online_dpo_oracle", None),
    "sgpo": ("sgpo", {}),
    "sgpo_no_step1": ("sgpo", {"improver_warmup_steps": 0}),
    "sgpo_no_sft_mix": ("sgpo", {"policy_sft_weight": 0.0}),
    "sgpo_draft_anchor": ("sgpo", {"policy_sft_target": "draft"}),  # the policy's SFT term on its own drafts
    "sgpo_sees_reference": ("sgpo", {"improver_instruction": "reference: {reference}\nimprove"}),
    "edit_pairs": ("edit_pairs", {"pair_source": "edit"}),
    "sgpo_template": ("sgpo", {"improver_format": "template"}),
}
SEARCHED = ("sft", "spin", "online_dpo_oracle", "sgpo", "edit_pairs")  # the arms whose learning rate is searched
# The headline metric: exact match of a sampled answer (pass@1, temperature 1, ``eval_samples`` samples per prompt).
# Greedy exact match changes only when a method changes which answer ranks first; at an SFT plateau none does in a
# few dozen updates (the oracle gained +0.8 greedy points on the earlier world). On-policy preference methods train
# the distribution the policy samples from, and the headroom the testbed is built for is headroom of samples
# (pass@k well above pass@1). Greedy exact match is reported beside it.
HEADLINE = "sampled_exact_match"


@dataclass
class Settings:
    """What every arm shares: data, updates, prompts per update, sampling, evaluation sizes, search grid, seeds."""

    checkpoint: str = str(TOY_CHECKPOINT_DIR)  # the start: an SFT checkpoint with its world.json
    steps: int = 60
    batch_size: int = 32
    learning_rates: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)  # every choice must lie inside it
    seeds: tuple[int, ...] = (0, 1, 2)
    validation_prompts: int = 400
    test_prompts: int = 800
    temperature: float = 1.0
    beta: float = 0.1
    warmup: float = 0.1  # fraction of the updates with a linear learning-rate warm-up (fresh Adam moments)
    max_new_tokens: int = 24
    pass_at_k: int = 8
    eval_samples: int = 4  # samples per prompt for the sampled exact match


def sft_set(checkpoint: str):
    """The fixed, finite SFT set the start checkpoint was trained on: every arm trains on these rows."""
    data = toy_checkpoint_metadata(checkpoint)["sft_data"]
    return make_dataset(
        data["regime"],
        "train",
        data["num_examples"],
        seed=data["seed"],
        reference_noise=data.get("reference_noise", 0.0),
    )


def regime(checkpoint: str) -> str:
    return toy_checkpoint_metadata(checkpoint)["sft_data"]["regime"]


def _train_rows(job: Job):
    """This seed's ``steps * batch_size`` rows of the SFT set, in this seed's order."""
    rows = sft_set(job.settings.checkpoint).shuffle(seed=job.seed)
    return rows.select(range(min(len(rows), job.settings.steps * job.settings.batch_size)))


def toy_score(text: str, answer_parts: str) -> float:
    """The checker's partial credit of ``text`` (the oracle's reward and the pair verdicts' judge)."""
    return check_answer(text, json.loads(answer_parts)).partial_credit


def _shared_arm_settings(job: Job) -> dict:
    """What the shared SGPO and oracle arms take from this world: the trainers' lengths and logging, the checker."""
    return dict(max_length=256, logging_steps=min(5, job.settings.steps), gold_column="answer_parts", score=toy_score)


def _run_sft(job: Job, model, tokenizer, dataset) -> tuple[object, dict[str, float]]:
    """Continued SFT: NLL of the reference completions, same optimizer, updates and prompts per update."""

    def encode(batch: dict) -> dict:
        # The shipped checkpoint's own SFT: the same encoding (chat template, labels on the answer and its EOS) and
        # the same loss (the model's token-mean NLL of the labels).
        encoded = [
            encode_conversation(tokenizer, prompt, completion[0]["content"])
            for prompt, completion in zip(batch["prompt"], batch["completion"])
        ]
        return collate_conversations(encoded, tokenizer.pad_token_id)

    torch.manual_seed(job.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=job.learning_rate, weight_decay=0.0)
    warmup_steps = math.ceil(job.settings.warmup * job.settings.steps)
    supervised_updates(model, optimizer, dataset, job, warmup_steps, encode)
    return model, {}


def _run_sgpo(job: Job, model, tokenizer, dataset, overrides: dict) -> tuple[object, dict[str, float]]:
    """SGPO with the improver prompt the shipped checkpoint learned, greedy rewrites, and the arm's overrides."""
    config = {
        "improver_template": TOY_IMPROVER_TEMPLATE,
        "improver_instruction": TOY_IMPROVER_INSTRUCTION,  # the next turn ("auto" picks it on this world)
        "improver_temperature": 0.0,  # greedy rewrites: the improver's best guess, not a sample
        **overrides,
    }
    trainer, diagnostics = run_sgpo(job, model, tokenizer, dataset, config, **_shared_arm_settings(job))
    return trainer.model, diagnostics


def run_job(job: Job) -> RunResult:
    """Train one arm from the shipped checkpoint and score it on validation (and test)."""
    model, tokenizer, diagnostics, seconds = train_arm(
        job, ARMS, _train_rows, _run_sft, _run_sgpo, _shared_arm_settings
    )
    world = regime(job.settings.checkpoint)
    validation = scores(model, tokenizer, world, "validation", job.settings.validation_prompts, job.settings)
    test = (
        scores(model, tokenizer, world, "test", job.settings.test_prompts, job.settings) if job.evaluate_test else None
    )
    return RunResult(job.arm, job.learning_rate, job.seed, validation, test, seconds, diagnostics)


def scores(model, tokenizer, regime: str, split: str, num_prompts: int, settings: Settings) -> dict[str, float]:
    """Greedy exact match and partial credit, and the exact match of samples at the training temperature."""
    dataset = make_dataset(regime, split, num_prompts, seed=0)
    result = evaluate_model(model, tokenizer, dataset)
    sampled = pass_at_k(model, tokenizer, dataset, settings.eval_samples, settings.temperature)
    return {
        "exact_match": result["exact_match"],
        "partial_credit": result["partial_credit"],
        "sampled_exact_match": sampled["sample"],
    }


def start_scores(settings: Settings) -> dict:
    """The start's test scores, and its headroom on validation: greedy exact match against pass@k of samples."""
    torch.set_num_threads(1)
    model, tokenizer = load_start(settings.checkpoint)
    world = regime(settings.checkpoint)
    start = scores(model, tokenizer, world, "test", settings.test_prompts, settings)
    validation = make_dataset(world, "validation", settings.validation_prompts, seed=0)
    headroom = pass_at_k(model, tokenizer, validation, settings.pass_at_k, settings.temperature)
    return {**start, "validation_headroom": headroom}
