"""The real-model benchmark's arms on SmolLM2-135M-Instruct: what every arm shares (`Settings`), the rows they train
on, one run (`run_job`: a fresh LoRA adapter from the start, or for SGPO from its cached Step 1, then scored) and the
start's own scores."""

import json
from dataclasses import dataclass, replace

import torch

from benchmarks.protocol.arms import load_start, run_sgpo, supervised_updates, train_arm
from benchmarks.protocol.runs import Job, RunResult
from benchmarks.real.evaluation import headroom, scores
from benchmarks.real.start import lora_config, sft_batch
from benchmarks.real.step1 import QUICK_STEP1, Step1Settings, real_step1_dir
from benchmarks.real.task import Row, conversational, make_splits, prompt_from_json


# arm -> (the method whose learning rate it uses, its SGPOConfig overrides; None: not an SGPOTrainer arm). An SGPO arm
# starts from its seed's Step 1 (benchmarks/real/step1.py, with the target of ``improver_target``, the library's
# default unless overridden) and runs Step 2 (improver_warmup_steps=0: Step 1 is done), unless it says otherwise.
ARMS: dict[str, tuple[str, dict | None]] = {
    "sft": ("sft", None),
    "spin": ("spin", {"pair_source": "spin"}),
    "online_dpo_oracle": ("online_dpo_oracle", None),
    "self_sharpen": ("self_sharpen", {"pair_source": "self_sharpen", "pair_gate": "reference_margin"}),
    "sgpo": ("sgpo", {}),
    "sgpo_step1_only": ("sgpo", None),  # Step 1's model, scored without Step 2: what Step 1 alone does
    "sgpo_reference_targets": ("sgpo", {"improver_target": "reference"}),
    "sgpo_no_gate": ("sgpo", {"pair_gate": "none"}),
    "sgpo_sampled_rewrites": ("sgpo", {"improver_temperature": 1.0}),
    "sgpo_no_step1": ("sgpo", {"step1": False}),
    "sgpo_draft_anchor": ("sgpo", {"policy_sft_target": "draft"}),  # the policy's SFT term on its own drafts
    "sgpo_draft_anchor_step1_only": ("sgpo", None),  # that arm's Step 1, scored without Step 2
    "sgpo_no_step2_sft": ("sgpo", {"policy_sft_weight": 0.0}),  # Step 1 as the default; no SFT term in Step 2
    "sft_same_updates": ("sft", None),  # as many prompts as SGPO's Step 1 and Step 2 together
    "spin_same_updates": ("spin", {"pair_source": "spin"}),
}
SEARCHED = ("sft", "spin", "online_dpo_oracle", "self_sharpen", "sgpo")
STEP1 = Step1Settings()  # Step 1 as every SGPO arm builds it (its seed and target set per arm)
HEADLINE = "sampled_accuracy"
GOLD_COLUMN = "task"
READINESS_ROWS = 8  # SGPOConfig's improver_readiness_prompts


@dataclass
class Settings:
    checkpoint: str = ""  # the start (benchmarks/real_start.py); resolved at run time
    steps: int = 24
    batch_size: int = 8
    learning_rates: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
    seeds: tuple[int, ...] = (0, 1)
    validation_prompts: int = 64
    test_prompts: int = 128
    held_out_prompts: int = 64
    temperature: float = 1.0
    beta: float = 0.1
    warmup: float = 0.1
    max_new_tokens: int = 24  # the longest reference is 19 tokens with its end of turn
    pass_at_k: int = 8
    eval_samples: int = 4


def task_score(text: str, task: str) -> float:
    """The checker's partial credit of ``text`` for the prompt serialised in ``task`` (the oracle's reward)."""
    return prompt_from_json(json.loads(task)).partial_credit(text)


def _train_rows(job: Job):
    from datasets import Dataset

    rows = Dataset.from_list(conversational(make_splits()["train"])).shuffle(seed=job.seed)
    # Every arm gets the rows its updates use, plus the rows that `improver_ready_at` sets aside (its default 8), so
    # that the readiness-gated arm trains on as many rows as the others.
    return rows.select(range(min(len(rows), job.settings.steps * job.settings.batch_size + READINESS_ROWS)))


def _shared_arm_settings(job: Job) -> dict:
    """What the shared SGPO and oracle arms take from this task: the trainers' lengths and logging, the checker,
    and a fresh LoRA adapter."""
    return dict(
        max_length=384,
        logging_steps=min(4, job.settings.steps),
        gold_column=GOLD_COLUMN,
        score=task_score,
        peft_config=lora_config(),
    )


def _run_sft(job: Job, model, tokenizer, rows) -> tuple[object, dict]:
    """Continued SFT on the references, a fresh LoRA adapter (as the start was built)."""
    from peft import get_peft_model

    def encode(batch: dict) -> dict:
        prompts = [prompt_from_json(json.loads(task)) for task in batch[GOLD_COLUMN]]
        references = [completion[0]["content"] for completion in batch["completion"]]
        return sft_batch(tokenizer, [Row(p, r, False) for p, r in zip(prompts, references)])

    torch.manual_seed(job.seed)
    model = get_peft_model(model, lora_config())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=job.learning_rate)
    warmup_steps = max(1, round(job.settings.warmup * job.settings.steps))
    supervised_updates(model, optimizer, rows, job, warmup_steps, encode)
    return model, {}


def step1_settings(arm: str, seed: int, quick: bool = False) -> Step1Settings | None:
    """The Step 1 an SGPO arm starts from (its seed; the target its Step 2 uses), or None (no Step 1). ``quick``: CI's
    few-row Step 1 on the stand-in start. A ``<arm>_step1_only`` arm scores ``<arm>``'s Step 1."""
    method, overrides = ARMS[arm.removesuffix("_step1_only")]
    if method != "sgpo" or (overrides or {}).get("step1") is False:
        return None
    from trl_sgpo import SGPOConfig

    overrides = overrides or {}
    target = overrides.get("improver_target", SGPOConfig.improver_target)
    sft_target = overrides.get("policy_sft_target", SGPOConfig.policy_sft_target)
    return replace(QUICK_STEP1 if quick else STEP1, seed=seed, target=target, policy_sft_target=sft_target)


def same_updates_steps(settings: Settings, quick: bool = False) -> int:
    """Updates of ``batch_size`` prompts that hold as many prompts as SGPO's Step 1 and Step 2 together."""
    return settings.steps + (QUICK_STEP1 if quick else STEP1).rows // settings.batch_size


def _run_sgpo(job: Job, model, tokenizer, rows, overrides: dict) -> tuple[object, dict]:
    """SGPO's Step 2 with the arm's overrides on a fresh LoRA adapter, from the arm's Step 1 (loaded here in place of
    the start) or, without one, from the start with no Step 1 at all."""
    overrides = {key: value for key, value in overrides.items() if key != "step1"}
    step1 = step1_settings(job.arm, job.seed, _quick(job))
    if step1 is not None:
        model, tokenizer = load_start(str(real_step1_dir(step1, quick=_quick(job))))
    config = {"improver_warmup_steps": 0, **overrides}
    trainer, summary = run_sgpo(
        job, model, tokenizer, rows, config, skip_special_tokens=True, **_shared_arm_settings(job)
    )
    if step1 is not None:
        build = json.loads((real_step1_dir(step1, quick=_quick(job)) / "build.json").read_text())
        summary["step1_updates"], summary["step1_seconds"] = build["updates"], build["seconds"]
    else:
        summary["step1_updates"] = 0
    return trainer.model, summary


def _quick(job: Job) -> bool:
    return "quick" in job.settings.checkpoint  # CI's stand-in start: its Step 1 is the quick one too


def _evaluate(model, tokenizer, split: str, count: int, settings: Settings) -> dict:
    rows = make_splits()[split][:count]
    torch.manual_seed(0)  # the same sampling noise for every arm
    return scores(model, tokenizer, rows, settings.eval_samples, settings.temperature, settings.max_new_tokens)


def run_job(job: Job) -> RunResult:
    """Train one arm from the start and score it on validation (and on test and the held-out family)."""
    if job.arm.endswith("_same_updates"):
        job = replace(job, settings=replace(job.settings, steps=same_updates_steps(job.settings, _quick(job))))
    if job.arm.endswith("_step1_only"):  # the Step 1 of the arm named before the suffix, scored as it is
        folder = real_step1_dir(step1_settings(job.arm, job.seed, _quick(job)), quick=_quick(job))
        model, tokenizer = load_start(str(folder))
        diagnostics = {"step1_updates": json.loads((folder / "build.json").read_text())["updates"]}
        seconds = json.loads((folder / "build.json").read_text())["seconds"]
    else:
        model, tokenizer, diagnostics, seconds = train_arm(
            job, ARMS, _train_rows, _run_sft, _run_sgpo, _shared_arm_settings
        )
    settings = job.settings
    if hasattr(model, "merge_and_unload"):  # scoring runs the merged weights: the adapter's extra matmuls cost time
        model = model.merge_and_unload()
    validation = _evaluate(model, tokenizer, "validation", settings.validation_prompts, settings)
    test = None
    if job.evaluate_test:
        test = _evaluate(model, tokenizer, "test", settings.test_prompts, settings)
        held_out = _evaluate(model, tokenizer, "held_out", settings.held_out_prompts, settings)
        test |= {f"held_out_{key}": value for key, value in held_out.items()}
    return RunResult(job.arm, job.learning_rate, job.seed, validation, test, seconds, diagnostics)


def start_scores(settings: Settings) -> dict:
    """The start's test, held-out-family and validation scores (the plateau gate compares continued SFT with the
    last), and its headroom on validation."""
    model, tokenizer = load_start(settings.checkpoint)
    test = _evaluate(model, tokenizer, "test", settings.test_prompts, settings)
    held_out = _evaluate(model, tokenizer, "held_out", settings.held_out_prompts, settings)
    validation = _evaluate(model, tokenizer, "validation", settings.validation_prompts, settings)
    test |= {f"validation_{key}": value for key, value in validation.items()}
    torch.manual_seed(0)
    rows = make_splits()["validation"][: settings.validation_prompts]
    room = headroom(model, tokenizer, rows, settings.pass_at_k, settings.temperature, settings.max_new_tokens)
    return {**test, **{f"held_out_{key}": value for key, value in held_out.items()}, "validation_headroom": room}
