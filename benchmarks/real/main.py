"""Does SGPO improve a real instruct model? SGPO against its baselines on SmolLM2-135M-Instruct.

    python benchmarks/real_quality.py --workers 2                 # the full benchmark (see the results file's time)
    python benchmarks/real_quality.py --workers 2 --arms sft spin  # a part; parts merge into one table
    python benchmarks/real_quality.py --quick                      # a few steps, one seed, for CI

The task (benchmarks/real/task.py) is instruction following with verifiable constraints: simple requests ("Name a
fruit.") with one or two constraints (all lowercase, end with a given word, exactly N items, ...), checked by code.
The start (benchmarks/real_start.py) is SmolLM2-135M-Instruct after LoRA SFT on the task's SFT set to its validation
plateau, built once and cached. Every arm trains a fresh LoRA adapter (r=16, every linear layer) on that same SFT set,
for the same number of updates of the same number of prompts:

- ``sft``: continued SFT on the references; ``spin``: DPO with chosen = reference, rejected = own sample;
- ``online_dpo_oracle``: TRL's OnlineDPOTrainer with the checker's partial credit as reward (tied pairs carry no
  gradient, and are counted): the sensitivity gate;
- ``self_sharpen``: the control: chosen = the policy's own greedy answer, rejected = its sample, the same pair gate,
  no improver (what sharpening toward the policy's mode gains);
- ``sgpo``: SGPO with the package's defaults, as the paper stages it: Step 1 (benchmarks/real/step1.py: the start's
  drafts of 384 training prompts, one pass of the improver, built once per seed and cached), then Step 2 from it;
- ``sgpo_step1_only``: Step 1's model scored as it is; ``sgpo_reference_targets``, ``sgpo_no_gate``,
  ``sgpo_sampled_rewrites``, ``sgpo_no_step1``: each new mechanism switched off in turn; ``sgpo_draft_anchor``:
  the policy's SFT term on its own drafts instead of the references (``policy_sft_target="draft"``, Step 1 and 2);
  ``sgpo_draft_anchor_step1_only``: its Step 1 scored as it is; ``sgpo_no_step2_sft``: Step 1 as the default, Step 2
  without the policy's SFT term (``policy_sft_weight=0``);
- ``sft_same_updates``, ``spin_same_updates``: SFT and SPIN given as many prompts as SGPO's Step 1 and Step 2.

Each method's learning rate is chosen on validation (first seed), the variants use their method's; test and the
held-out constraint family play no part in any choice. The protocol, the pair diagnostics and the tables are shared
with the toy benchmark (benchmarks/protocol/). Every run's results are kept under ``--output-dir``/real_quality_runs,
so that a part (``--arms``, ``--seeds``) reuses what earlier parts ran and the table always shows every arm run so
far.
"""

import argparse
import json
import os
import time
from dataclasses import asdict

from benchmarks.protocol.command import apply_overrides, parse_args, run_header, sgpo_defaults, write_report
from benchmarks.protocol.runs import cache_folder_name, has_saved_runs
from benchmarks.protocol.search import run_benchmark
from benchmarks.real.arms import ARMS, HEADLINE, SEARCHED, Settings, run_job, start_scores, step1_settings
from benchmarks.real.report import markdown_table, summarize
from benchmarks.real.start import real_start_dir
from benchmarks.real.step1 import real_step1_dir


SGPO_DEFAULTS = (  # the package's defaults the report records for the sgpo arm
    "improver_format",
    "improver_target",
    "improver_temperature",
    "pair_gate",
    "improver_warmup_drafts",
    "improver_loss_weight",
    "policy_sft_weight",
    "policy_sft_target",
)


def _settings(args: argparse.Namespace) -> Settings:
    if args.quick:
        settings = Settings(
            steps=2,
            batch_size=4,
            learning_rates=(3e-4,),
            seeds=(0,),
            validation_prompts=4,
            test_prompts=4,
            held_out_prompts=4,
            max_new_tokens=8,
            pass_at_k=2,
            eval_samples=1,
        )
    else:
        settings = Settings()
    apply_overrides(settings, args)
    return settings


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(
        argv,
        __doc__.split("\n\n")[0],
        list(ARMS),
        "start from this model folder (default: benchmarks/real_start.py's)",
    )
    if args.render:
        with open(args.render) as handle:
            report = json.load(handle)
        report["summary"] = summarize(report)
        write_report(report, markdown_table(report), args.output_dir, "real_quality")
        return report
    settings = _settings(args)
    settings.checkpoint = settings.checkpoint or str(real_start_dir(quick=args.quick))
    with open(os.path.join(settings.checkpoint, "build.json")) as handle:
        start_build = json.load(handle)
    started = time.perf_counter()
    # Every run is saved under the output folder (keyed by its settings), so parts of the benchmark run one after
    # another, or in the background, and merge: a later part reruns nothing an earlier one saved.
    cache_dir = os.path.join(args.output_dir, "real_quality_runs", cache_folder_name(settings))
    arms = [arm for arm in ARMS if arm in args.arms or has_saved_runs(cache_dir, arm)]
    # Step 1 once per seed and target, before the workers start (two workers must not build one folder at once).
    steps1 = {
        step1
        for arm in args.arms
        if arm in ARMS
        for seed in settings.seeds
        if (step1 := step1_settings(arm, seed, args.quick))
    }
    for step1 in sorted(steps1, key=lambda step1: (step1.seed, step1.target, step1.policy_sft_target)):
        folder = real_step1_dir(step1, quick=args.quick)
        print(f"Step 1 ({step1.target}, SFT on {step1.policy_sft_target}, seed {step1.seed}): {folder}", flush=True)
    report = run_benchmark(
        settings,
        tuple(arms),
        args.workers,
        arm_table=ARMS,
        searched_methods=SEARCHED,
        runner=run_job,
        headline=HEADLINE,
        cache_dir=cache_dir,
        only_cached=tuple(arm for arm in arms if arm not in args.arms),
    )
    defaults = sgpo_defaults(SGPO_DEFAULTS)
    report.update(
        **run_header("real_quality.py", argv, args.workers),
        settings=asdict(settings),
        arms=arms,
        start_build=start_build,
        start=_start_scores_cached(settings, cache_dir),
        sgpo_default=defaults
        | {"learning_rate": report["chosen_learning_rate"].get("sgpo"), "use_peft": True, "lora_r": 16},
        total_seconds=time.perf_counter() - started,
    )
    report["summary"] = summarize(report)
    write_report(report, markdown_table(report), args.output_dir, "real_quality")
    return report


def _start_scores_cached(settings: Settings, cache_dir: str) -> dict:
    path = os.path.join(cache_dir, "start.json")
    if os.path.isfile(path):
        with open(path) as handle:
            saved = json.load(handle)
        if f"validation_{HEADLINE}" in saved:  # saved before the plateau gate: scored again
            return saved
    result = start_scores(settings)
    os.makedirs(cache_dir, exist_ok=True)
    with open(path, "w") as handle:
        json.dump(result, handle, indent=1)
    return result
