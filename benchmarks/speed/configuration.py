"""One configuration's run: its arms built on identical copies of one model, their steps timed interleaved, the
medians and paired ratios to both OnlineDPO baselines; then its peak memory, goals and report, written to files."""

import argparse
import gc
import json
import os
import sys
import tempfile
from typing import Any

import torch

from benchmarks.protocol.quartiles import percentile, spread
from benchmarks.speed.builders import batches, build_model, build_trainer
from benchmarks.speed.data import build_dataset, build_tokenizer
from benchmarks.speed.instrumentation import StepProbe, instrument, run_step
from benchmarks.speed.memory import forwarded_argv, measure_memory
from benchmarks.speed.report import check_goals, environment, markdown_report
from benchmarks.speed.settings import BASELINE, COMPONENTS, REWARD_MODEL_BASELINE, Settings, results_name


def measure_timing(settings: Settings, tokenizer, dataset, workdir: str) -> dict[str, Any]:
    """Build the three arms on identical copies of one model, then time interleaved steps."""
    trainers, probes = {}, {}
    arms = settings.arms
    for arm in arms:
        model = build_model(settings, tokenizer)
        workspace = os.path.join(workdir, arm)
        trainers[arm] = build_trainer(arm, settings, tokenizer, model, dataset, workspace, peft=settings.lora)
        probes[arm] = StepProbe(settings.device)
        instrument(trainers[arm], probes[arm])
    all_batches = batches(dataset, settings.batch_size)
    samples: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
    total = settings.warmup + settings.repeats
    for repeat in range(total):
        order = arms[repeat % len(arms) :] + arms[: repeat % len(arms)]  # rotate: no arm always runs first
        batch = all_batches[repeat % len(all_batches)]
        for arm in order:
            torch.manual_seed(settings.seed + repeat)
            result = run_step(trainers[arm], batch, probes[arm])
            if repeat >= settings.warmup:
                samples[arm].append(result)
        timed = "warm-up" if repeat < settings.warmup else f"repeat {repeat - settings.warmup + 1}/{settings.repeats}"
        line = "  ".join(f"{arm} {samples[arm][-1]['step']:.3f}s" for arm in arms if repeat >= settings.warmup)
        print(f"[timing] {timed} {line}", file=sys.stderr, flush=True)
    del trainers
    gc.collect()
    return summarize_timing(samples)


def summarize_timing(samples: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    baseline_steps = [s["step"] for s in samples[BASELINE]]
    baseline_median = percentile(baseline_steps, 0.5)
    rm_steps = [s["step"] for s in samples[REWARD_MODEL_BASELINE]]
    timing = {}
    for arm, arm_samples in samples.items():
        summary = {name: spread([s[name] for s in arm_samples]) for name in COMPONENTS}
        work_keys = sorted({key for s in arm_samples for key in s if key.startswith("work/")})
        work = {key[len("work/") :]: percentile([s.get(key, 0.0) for s in arm_samples], 0.5) for key in work_keys}
        step_median = summary["step"]["median"]
        paired = [s["step"] / b for s, b in zip(arm_samples, baseline_steps)]
        paired_rm = [s["step"] / b for s, b in zip(arm_samples, rm_steps)]
        timing[arm] = {
            "samples": [{name: s[name] for name in COMPONENTS} for s in arm_samples],
            "summary": summary,
            "fractions": {name: summary[name]["median"] / step_median for name in COMPONENTS[2:]},
            "ratio_vs_online_dpo": step_median / baseline_median,
            "paired_ratio_vs_online_dpo": spread(paired),
            "ratio_vs_online_dpo_rm": step_median / percentile(rm_steps, 0.5),
            "paired_ratio_vs_online_dpo_rm": spread(paired_rm),
            "work": work,
        }
    return timing


def run_configuration(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Time the configuration's arms, measure their peak memory (unless skipped), check the goals, and write the
    report, ``<results_name>.{md,json}`` in ``--output-dir``."""
    tokenizer = build_tokenizer(settings)
    dataset = build_dataset(settings, tokenizer, num_rows=settings.batch_size * 4)
    with tempfile.TemporaryDirectory() as workdir:
        timing = measure_timing(settings, tokenizer, dataset, workdir)
    memory = None if settings.skip_memory else measure_memory(settings, forwarded_argv(args))
    results = {
        "environment": environment(settings, tokenizer),
        "timing": timing,
        "memory": memory,
        "goals": check_goals(timing, memory),
    }
    report = markdown_report(results)
    print(report)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    name = results_name(settings)
    (args.output_dir / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.output_dir / f"{name}.md").write_text(report)
    return results
