"""The improver's rewrite speculated from its draft (``improver_speculative_tokens``): its generation time against
plain generation and against the draft's, and the share of rewrite tokens taken from the draft.

    python benchmarks/speculation.py                          # the toy world's shipped checkpoint, ~2 min
    python benchmarks/speculation.py --quick --output-dir /tmp # CI: a few batches
    python benchmarks/speculation.py --real-start --repeats 8  # SmolLM2 after the real task's SFT, ~10 min
    python benchmarks/speculation.py --real-start --step1-updates 24 --repeats 6   # ... and after Step 1, ~16 min

``--step1-updates N`` first trains the improver role as the paper's Step 1 does (`SGPOTrainer`, improver steps only,
LoRA r=16 on every linear layer at ``--step1-learning-rate``, 8 prompts per update, the real task's training rows),
merges the adapter and measures the trained improver: an improver that has learned to edit copies more of its draft
than the untrained one.

Each repeat samples one batch of drafts (the policy, next-turn format, keeping the drafts' KV cache), then generates
the improver's rewrites of those drafts twice from copies of the same cache: plain `generate` and speculated
(`trl_sgpo.step.speculation`), in an order that alternates between repeats; greedy rewrites (the toy benchmark's SGPO
setting, ``improver_temperature=0``) and sampled ones (temperature 1) are both measured. Reported: medians and the
paired per-repeat ratios (median and inter-quartile range) of speculated / plain and rewrite / draft; the goal (issue
20) is met when the upper quartile of speculated rewrite / draft is at most 0.5. Greedy rewrites are checked to be
identical with and without speculation in every repeat. Writes ``speculation.{md,json}``.
"""

import argparse
import copy
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.protocol.command import RESULTS_DIR
from benchmarks.protocol.quartiles import spread
from benchmarks.real.start import lora_config, start_dir
from benchmarks.real.task import conversational, make_splits
from trl_sgpo.step.speculation import SpeculationStats


MODELS = {
    "toy": "The toy world's shipped checkpoint",
    "smollm2_real_start": "SmolLM2-135M-Instruct after the real task's SFT (before Step 1, the default instruction)",
    "smollm2_step1": "SmolLM2-135M-Instruct after the real task's SFT and {updates} Step 1 updates (LoRA r=16, "
    "learning rate {learning_rate:g}, merged; the default instruction)",
}
GOAL = 0.5  # speculated rewrite generation / draft generation, upper quartile (toy world)


def sgpo_trainer(model, tokenizer, dataset, workdir: str, batch_size: int, speculative_tokens: int, **overrides):
    """An `SGPOTrainer` in the next-turn format at the benchmarks' sampling settings (24 new tokens, temperature 1)."""
    from trl_sgpo import SGPOConfig, SGPOTrainer

    args = SGPOConfig(
        output_dir=workdir,
        per_device_train_batch_size=batch_size,
        max_new_tokens=24,  # the toy and the real quality benchmarks'
        temperature=1.0,
        improver_format="next_turn",
        improver_speculative_tokens=speculative_tokens,
        report_to="none",
        use_cpu=True,
        generation_kwargs={},
        **overrides,
    )
    trainer = SGPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.model.eval()
    return trainer


def real_start(step1_updates: int = 0, step1_learning_rate: float = 3e-4) -> tuple[Any, Any, dict]:
    """SmolLM2-135M-Instruct after the real task's SFT (benchmarks/real_start.py), after ``step1_updates`` Step 1
    updates where set; the model, its tokenizer and what Step 1 logged (the improver's loss at its first and last
    logged update)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = start_dir()
    if not (folder / "build.json").is_file():
        raise FileNotFoundError(f"no real-task start at {folder}: build it first with python benchmarks/real_start.py")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    if not step1_updates:
        return model, tokenizer, {}
    from trl_sgpo import SGPOConfig, SGPOTrainer

    rows = Dataset.from_list(conversational(make_splits()["train"])).shuffle(seed=0).select(range(8 * step1_updates))
    with tempfile.TemporaryDirectory() as workdir:
        args = SGPOConfig(
            output_dir=workdir,
            per_device_train_batch_size=8,
            max_steps=step1_updates,
            improver_warmup_steps=step1_updates,  # every update is Step 1's
            learning_rate=step1_learning_rate,
            lr_scheduler_type="constant",
            max_new_tokens=24,
            temperature=1.0,
            max_length=512,
            improver_format="next_turn",
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            use_cpu=True,
            seed=0,
        )
        trainer = SGPOTrainer(
            model=model, args=args, train_dataset=rows, processing_class=tokenizer, peft_config=lora_config()
        )
        started = time.perf_counter()
        trainer.train()
        losses = [log["sgpo/improver_loss"] for log in trainer.state.log_history if "sgpo/improver_loss" in log]
        model = trainer.model.merge_and_unload()
    step1 = {
        "updates": step1_updates,
        "learning_rate": step1_learning_rate,
        "seconds": time.perf_counter() - started,
        "improver_loss_first": losses[0] if losses else None,
        "improver_loss_last": losses[-1] if losses else None,
    }
    print(f"[speculation] Step 1: {step1}", file=sys.stderr, flush=True)
    return model, tokenizer, step1


def real_start_trainer(
    workdir: str, batch_size: int, speculative_tokens: int, improver_temperature: float, start: tuple | None = None
):
    """SmolLM2-135M-Instruct after the real task's SFT (``start``: a model and tokenizer from `real_start`, copied),
    on that task's prompts, with the library's default improver instruction: the improver role as a user's run finds
    it before Step 1, or after it."""
    from datasets import Dataset

    model, tokenizer = (copy.deepcopy(start[0]), start[1]) if start else real_start()[:2]
    dataset = Dataset.from_list(conversational(make_splits()["train"]))
    return sgpo_trainer(
        model,
        tokenizer,
        dataset,
        workdir,
        batch_size,
        speculative_tokens,
        max_length=512,
        improver_temperature=improver_temperature,
    )


def toy_trainer(workdir: str, batch_size: int, speculative_tokens: int, improver_temperature: float):
    """The toy world's shipped checkpoint on its own prompts, with the instruction it learned."""
    from trl_sgpo.toy import load_toy_model, make_dataset

    model, tokenizer = load_toy_model()
    dataset = make_dataset("plain", "train", 4096, seed=0)
    return sgpo_trainer(
        model,
        tokenizer,
        dataset,
        workdir,
        batch_size,
        speculative_tokens,
        max_length=256,
        improver_instruction="improve",
        improver_temperature=improver_temperature,
    )


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def measure(trainer, repeats: int, warmup: int, speculative_tokens: int) -> dict:
    """Per repeat: the drafts' generation time, the plain and the speculated rewrite times, the accepted share."""
    model, sampler = trainer.model, trainer.sampler
    batch_size = trainer.args.per_device_train_batch_size
    rows = trainer.train_dataset
    samples, identical = [], True
    greedy = trainer.args.improver_temperature == 0
    for repeat in range(warmup + repeats):
        inputs = rows[repeat * batch_size : (repeat + 1) * batch_size]
        torch.manual_seed(repeat)
        batch, draft_seconds = timed(trainer.draft, model, inputs, keep_cache=True)
        prompts = trainer.layout.improver_prompts(batch)
        ids, mask = prompts.generation_ids, prompts.generation_mask
        results = {}
        for tokens in (0, speculative_tokens) if repeat % 2 == 0 else (speculative_tokens, 0):
            sampler.speculative_tokens = tokens
            cache = copy.deepcopy(batch.draft_cache)
            torch.manual_seed(1000 + repeat)
            stats = SpeculationStats()
            chosen, seconds = timed(
                sampler, model, ids, mask, "improver", cache=cache, drafts=batch.drafts, speculation=stats
            )
            results[tokens] = (chosen, seconds, stats if tokens else None)
        if greedy:
            identical &= [c.token_ids for c in results[0][0]] == [c.token_ids for c in results[speculative_tokens][0]]
        if repeat < warmup:
            continue
        speculation = results[speculative_tokens][2]
        samples.append(
            {
                "draft": draft_seconds,
                "plain": results[0][1],
                "speculated": results[speculative_tokens][1],
                "accepted_share": speculation.accepted_share,
                "forwards": speculation.forwards,
                "draft_tokens": sum(len(d.token_ids) + d.ended for d in batch.drafts),
                "rewrite_tokens": speculation.generated,
            }
        )
    summary = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
    for name, (a, b) in {
        "speculated_vs_plain": ("speculated", "plain"),
        "plain_vs_draft": ("plain", "draft"),
        "speculated_vs_draft": ("speculated", "draft"),
    }.items():
        ratios = spread([s[a] / s[b] for s in samples])
        summary[name] = {key: ratios[key] for key in ("q1", "median", "q3")}
    summary["identical_greedy_rewrites"] = identical if greedy else None
    return {"summary": summary, "samples": samples}


def markdown(report: dict) -> str:
    settings = report["settings"]
    model = MODELS[settings["model"]].format(**(report.get("step1") or {}))
    lines = [
        f"Command: `{report['command']}` ({report['date']}, {report['device']}, {settings['threads']} thread(s)). "
        f"{model}, next-turn format, {settings['batch_size']} prompts per batch, "
        f"{settings['repeats']} repeats after {settings['warmup']} warm-up, up to {settings['speculative_tokens']} "
        "draft tokens proposed per forward pass. Times are medians per batch; ratios are the median and "
        "inter-quartile range of the per-repeat paired ratios.",
        "",
        "| rewrites | draft | rewrite, plain | rewrite, speculated | speculated / plain | rewrite / draft, plain "
        "| rewrite / draft, speculated | tokens from the draft | forward passes | greedy identical |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ratio(r: dict) -> str:
        return f"{r['median']:.2f}x ({r['q1']:.2f}-{r['q3']:.2f})"

    for name, result in report["results"].items():
        s = result["summary"]
        same = {True: "yes", False: "NO", None: "n/a (sampled)"}[s["identical_greedy_rewrites"]]
        lines.append(
            f"| {name} | {1000 * s['draft']:.0f} ms | {1000 * s['plain']:.0f} ms | {1000 * s['speculated']:.0f} ms "
            f"| {ratio(s['speculated_vs_plain'])} | {ratio(s['plain_vs_draft'])} | {ratio(s['speculated_vs_draft'])} "
            f"| {100 * s['accepted_share']:.0f}% | {s['forwards']:.0f} | {same} |"
        )
    if step1 := report.get("step1"):
        lines += [
            "",
            f"Step 1: {step1['updates']} updates in {step1['seconds']:.0f} s; the improver's loss went from "
            f"{step1['improver_loss_first']:.2f} (first update) to {step1['improver_loss_last']:.2f} (last).",
        ]
    lines += [
        "",
        "Goal: speculated rewrite generation at most "
        f"{GOAL:g}x the draft's (upper quartile), greedy rewrites (the toy benchmark's setting):",
    ]
    q3 = report["results"]["greedy"]["summary"]["speculated_vs_draft"]["q3"]
    lines.append(f"{q3:.2f}x: {'MET' if q3 <= GOAL else 'NOT MET'}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few batches (CI)")
    parser.add_argument("--repeats", type=int, default=None, help="timed batches (default 24, 2 with --quick)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--speculative-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--real-start",
        action="store_true",
        help="SmolLM2-135M-Instruct after the real task's SFT (benchmarks/real_start.py) instead of the toy world",
    )
    parser.add_argument(
        "--step1-updates", type=int, default=0, help="with --real-start: train the improver this many Step 1 updates"
    )
    parser.add_argument("--step1-learning-rate", type=float, default=3e-4, help="Step 1's learning rate (LoRA)")
    parser.add_argument("--output-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    if args.step1_updates < 0 or (args.step1_updates and not args.real_start):
        parser.error("--step1-updates needs --real-start and must be >= 0 (0: measure before Step 1)")
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 24)
    warmup = 1 if args.quick else 2
    results, step1, build = {}, None, toy_trainer
    if args.real_start:  # loaded (and trained) once, copied for each measurement
        *start, step1 = real_start(args.step1_updates, args.step1_learning_rate)
        build = functools.partial(real_start_trainer, start=start)
    kind = ("smollm2_step1" if args.step1_updates else "smollm2_real_start") if args.real_start else "toy"
    with tempfile.TemporaryDirectory() as workdir:
        for name, temperature in (("greedy", 0.0), ("sampled", 1.0)):
            trainer = build(workdir, args.batch_size, args.speculative_tokens, temperature)
            results[name] = measure(trainer, repeats, warmup, args.speculative_tokens)
    report = {
        "command": "python benchmarks/speculation.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d"),
        "device": "cpu",
        "settings": {
            "model": kind,
            "batch_size": args.batch_size,
            "repeats": repeats,
            "warmup": warmup,
            "speculative_tokens": args.speculative_tokens,
            "threads": args.threads,
        },
        "step1": step1 or None,
        "results": results,
        "goal": {"speculated_vs_draft_q3": results["greedy"]["summary"]["speculated_vs_draft"]["q3"], "target": GOAL},
    }
    report["command"] = report["command"].rstrip()
    table = markdown(report)
    print(table)
    os.makedirs(args.output_dir, exist_ok=True)
    name = {"toy": "speculation", "smollm2_real_start": "speculation_smollm2"}.get(kind, "speculation_smollm2_step1")
    Path(args.output_dir, f"{name}.json").write_text(json.dumps(report, indent=1))
    Path(args.output_dir, f"{name}.md").write_text(table)
    return report
