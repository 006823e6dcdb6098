"""Does SGPO improve a real instruct model? SGPO against its baselines on SmolLM2-135M-Instruct.

    python benchmarks/real_quality.py --workers 2                 # the full benchmark (see the results file's time)
    python benchmarks/real_quality.py --workers 2 --arms sft spin  # a part; parts merge into one table
    python benchmarks/real_quality.py --quick                      # a few steps, one seed, for CI

The task (benchmarks/real_task.py) is instruction following with verifiable constraints: simple requests ("Name a
fruit.") with one or two constraints (all lowercase, end with a given word, exactly N items, ...), checked by code.
The start (benchmarks/real_start.py) is SmolLM2-135M-Instruct after LoRA SFT on the task's SFT set to its validation
plateau, built once and cached. Every arm starts from it, trains a fresh LoRA adapter (r=16, every linear layer) on
that same SFT set, with the same number of optimizer updates and prompts per update (improver updates count):

- ``sft``: continued SFT on the references;
- ``spin``: DPO with chosen = reference, rejected = own sample;
- ``online_dpo_oracle``: TRL's OnlineDPOTrainer with the checker's partial credit as reward (tied pairs carry no
  gradient, and are counted): the sensitivity gate;
- ``sgpo``: SGPO with the package's defaults (a fixed Step 1 of 10% of the updates, then DPO steps);
- ``sgpo_step1_gated``: Step 1 ends when half of the held-out rewrites gain overlap with the reference
  (``improver_ready_at=0.5``), capped at half of the updates;
- ``sgpo_sees_reference``: the improver's instruction also shows the reference.

Each method's learning rate is chosen on validation (first seed), the SGPO variants use SGPO's; test and the
held-out constraint family play no part in any choice. The protocol, the pair diagnostics and the tables are those
of benchmarks/quality.py. Every run's results are kept under ``--output-dir``/real_quality_runs, so that a part
(``--arms``, ``--seeds``) reuses what earlier parts ran and the table always shows every arm run so far.
"""

import argparse
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import date


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import quality  # noqa: E402
import torch  # noqa: E402
from real_eval import headroom, scores  # noqa: E402
from real_start import lora_config, real_start_dir, sft_batch  # noqa: E402
from real_task import conversational, make_splits, prompt_from_json  # noqa: E402


ARMS: dict[str, tuple[str, dict | None]] = {
    "sft": ("sft", None),
    "spin": ("spin", {"pair_source": "spin"}),
    "online_dpo_oracle": ("online_dpo_oracle", None),
    "sgpo": ("sgpo", {}),
    "sgpo_step1_gated": ("sgpo", {"improver_ready_at": 0.5, "improver_warmup_steps": 0.5}),
    "sgpo_sees_reference": (
        "sgpo",
        {"improver_instruction": "Rewrite your answer so that it gets closer to this one: {reference}"},
    ),
}
SEARCHED = ("sft", "spin", "online_dpo_oracle", "sgpo")
HEADLINE = "sampled_accuracy"
GATE_POINTS = 8.0
PLATEAU_POINTS = 2.0  # continued SFT must gain less than this on validation: the start is at its SFT plateau
GOAL_POINTS = 3.0
ORACLE_SHARE = 0.4  # SGPO's gain must reach this share of the oracle's
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


Job = quality.Job  # one arm, one learning rate, one seed: the toy benchmark's records
RunResult = quality.RunResult


def task_score(text: str, task: str) -> float:
    """The checker's partial credit of ``text`` for the prompt serialised in ``task`` (the oracle's reward)."""
    return prompt_from_json(json.loads(task)).partial_credit(text)


def _train_rows(job: Job):
    from datasets import Dataset

    rows = Dataset.from_list(conversational(make_splits()["train"])).shuffle(seed=job.seed)
    # Every arm gets the rows its updates use, plus the rows that `improver_ready_at` sets aside (its default 8), so
    # that the readiness-gated arm trains on as many rows as the others.
    return rows.select(range(min(len(rows), job.settings.steps * job.settings.batch_size + READINESS_ROWS)))


def _load_start(checkpoint: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(checkpoint), AutoTokenizer.from_pretrained(checkpoint)


def _run_sft(job: Job, model, tokenizer, rows) -> tuple[object, dict]:
    from peft import get_peft_model
    from real_task import Row

    torch.manual_seed(job.seed)
    model = get_peft_model(model, lora_config())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=job.learning_rate)
    warmup_steps = max(1, round(job.settings.warmup * job.settings.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup_steps + 1)))
    model.train()
    for step in range(job.settings.steps):
        batch = rows[step * job.settings.batch_size : (step + 1) * job.settings.batch_size]
        prompts = [prompt_from_json(json.loads(task)) for task in batch[GOLD_COLUMN]]
        references = [completion[0]["content"] for completion in batch["completion"]]
        loss = model(**sft_batch(tokenizer, [Row(p, r, False) for p, r in zip(prompts, references)])).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return model, {}


def _shared_settings(job: Job, output_dir: str) -> dict:
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=job.settings.batch_size,
        max_steps=job.settings.steps,
        learning_rate=job.learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=job.settings.warmup,
        beta=job.settings.beta,
        temperature=job.settings.temperature,
        max_new_tokens=job.settings.max_new_tokens,
        max_length=384,
        report_to="none",
        save_strategy="no",
        logging_steps=min(4, job.settings.steps),
        disable_tqdm=True,
        seed=job.seed,
        data_seed=job.seed,
        use_cpu=True,
    )


def _run_sgpo(job: Job, model, tokenizer, rows, overrides: dict) -> tuple[object, dict]:
    from trl_sgpo import SGPOConfig, SGPOTrainer

    with tempfile.TemporaryDirectory() as output_dir:
        config = SGPOConfig(**_shared_settings(job, output_dir), overwrite_output_dir=True, **overrides)
        trainer = SGPOTrainer(
            model=model, args=config, train_dataset=rows, processing_class=tokenizer, peft_config=lora_config()
        )
        diagnostics = None
        if overrides.get("pair_source", "sgpo") == "sgpo":
            diagnostics = quality.PairDiagnostics(trainer, GOLD_COLUMN, task_score, skip_special_tokens=True)
        trainer.train()
        logged = quality._mean_logs(trainer.state.log_history)
        runs = next(c.phase_runs for c in trainer.callback_handler.callbacks if hasattr(c, "phase_runs"))
    summary = {**logged, **(diagnostics.summary() if diagnostics else {})}
    summary["step1_updates"] = runs[0][1] if runs and runs[0][0] == "improver" else 0  # how long Step 1 lasted
    return trainer.model, summary


def _run_online_dpo(job: Job, model, tokenizer, rows) -> tuple[object, dict]:
    from trl.experimental.online_dpo import OnlineDPOConfig

    trainer_class = quality.tie_dropping_online_dpo(rows, GOLD_COLUMN, task_score)

    def checker_reward(completions, task, **kwargs) -> list[float]:
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [task_score(text, gold) for text, gold in zip(texts, task)]

    with tempfile.TemporaryDirectory() as output_dir:
        config = OnlineDPOConfig(**_shared_settings(job, output_dir), bf16=False, gradient_checkpointing=False)
        trainer = trainer_class(
            model=model,
            reward_funcs=checker_reward,
            args=config,
            train_dataset=rows,
            processing_class=tokenizer,
            peft_config=lora_config(),
        )
        trainer.train()
    return trainer.model, {"tied_pairs": trainer.ties / max(trainer.pairs, 1)}


def _evaluate(model, tokenizer, split: str, count: int, settings: Settings) -> dict:
    rows = make_splits()[split][:count]
    torch.manual_seed(0)  # the same sampling noise for every arm
    return scores(model, tokenizer, rows, settings.eval_samples, settings.temperature, settings.max_new_tokens)


def run_job(job: Job) -> RunResult:
    """Train one arm from the start and score it on validation (and on test and the held-out family)."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    model, tokenizer = _load_start(job.settings.checkpoint)
    rows = _train_rows(job)
    _, overrides = ARMS[job.arm]
    if job.arm == "sft":
        model, diagnostics = _run_sft(job, model, tokenizer, rows)
    elif job.arm == "online_dpo_oracle":
        model, diagnostics = _run_online_dpo(job, model, tokenizer, rows)
    else:
        model, diagnostics = _run_sgpo(job, model, tokenizer, rows, overrides)
    seconds = time.perf_counter() - started
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
    model, tokenizer = _load_start(settings.checkpoint)
    test = _evaluate(model, tokenizer, "test", settings.test_prompts, settings)
    held_out = _evaluate(model, tokenizer, "held_out", settings.held_out_prompts, settings)
    validation = _evaluate(model, tokenizer, "validation", settings.validation_prompts, settings)
    test |= {f"validation_{key}": value for key, value in validation.items()}
    torch.manual_seed(0)
    rows = make_splits()["validation"][: settings.validation_prompts]
    room = headroom(model, tokenizer, rows, settings.pass_at_k, settings.temperature, settings.max_new_tokens)
    return {**test, **{f"held_out_{key}": value for key, value in held_out.items()}, "validation_headroom": room}


# ------------------------------------------------------------------------------------------------- the report


def _mean(report: dict, arm: str, metric: str) -> float:
    values = quality._test_values(report, arm, metric)
    return statistics.fmean(values) if values else math.nan


def _sigma(report: dict, arm: str, metric: str) -> float:
    values = quality._test_values(report, arm, metric)
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0


def summarize(report: dict) -> dict:
    """The gate (the oracle's gain), the goal (SGPO against SFT and SPIN, and its share of the oracle's gain)."""
    start = 100 * report["start"][HEADLINE]
    held_out_start = 100 * report["start"][f"held_out_{HEADLINE}"]
    summary = {"start": start, "held_out_start": held_out_start}
    summary["oracle_gain"] = _mean(report, "online_dpo_oracle", HEADLINE) - start
    # The plateau gate: the best continued-SFT run of the learning-rate search against the start, on validation.
    sft_validation = [100 * r["validation"][HEADLINE] for r in report["search"] if r["arm"] == "sft"]
    start_validation = report["start"].get(f"validation_{HEADLINE}")
    summary["sft_plateau_gain"] = (
        max(sft_validation) - 100 * start_validation if sft_validation and start_validation is not None else math.nan
    )
    summary["sigma_oracle_gain"] = _sigma(report, "online_dpo_oracle", HEADLINE)
    summary["sgpo_gain"] = _mean(report, "sgpo", HEADLINE) - start
    summary["sigma_sgpo_gain"] = _sigma(report, "sgpo", HEADLINE)
    for other in ("sft", "spin"):
        value, sigma = quality.difference(report, "sgpo", other, HEADLINE)
        summary[f"sgpo_minus_{other}"], summary[f"sigma_sgpo_minus_{other}"] = value, sigma
    oracle_gain = summary["oracle_gain"]
    summary["sgpo_share_of_oracle_gain"] = summary["sgpo_gain"] / oracle_gain if oracle_gain > 0 else math.nan
    summary["held_out"] = {
        arm: _mean(report, arm, f"held_out_{HEADLINE}") - held_out_start
        for arm in report["arms"]
        if quality._test_values(report, arm, f"held_out_{HEADLINE}")
    }
    sgpo_runs = [r for r in report["final"] if r["arm"] == "sgpo" and "copied_share" in r["diagnostics"]]
    copied = [r["diagnostics"]["copied_share"] for r in sgpo_runs]
    summary["copy_share"] = statistics.fmean(copied) if copied else None
    summary["sgpo_default"] = report.get("sgpo_default", {})
    return summary


def gate_and_goal_lines(summary: dict) -> list[str]:
    """The gate and the goal as the report states them; "not run" where their arms are missing."""
    lines = []
    plateau = summary.get("sft_plateau_gain", math.nan)
    if math.isnan(plateau):
        lines.append("Plateau gate: not run (it needs the sft arm and the start's validation scores).")
    else:
        verdict = "PASS" if plateau < PLATEAU_POINTS else "FAIL: the start is not at its SFT plateau"
        lines.append(
            f"Plateau gate: continued SFT's best validation run gains {plateau:+.1f} points of sampled accuracy over "
            f"the start (needs < {PLATEAU_POINTS:g}): {verdict}."
        )
    gain = summary["oracle_gain"]
    if math.isnan(gain):
        lines.append("Sensitivity gate: not run (it needs the online_dpo_oracle arm).")
    else:
        verdict = "PASS" if gain >= GATE_POINTS else "FAIL: the testbed cannot tell methods apart"
        lines.append(
            f"Sensitivity gate: the oracle arm gains {gain:+.1f} points of test sampled accuracy over the start "
            f"(needs >= {GATE_POINTS:g}): {verdict}."
        )
    if any(math.isnan(summary[f"sgpo_minus_{other}"]) for other in ("sft", "spin")):
        lines.append("Goal: not judged (it needs the sgpo, sft and spin arms).")
        return lines
    beats = all(
        summary[f"sgpo_minus_{o}"] >= GOAL_POINTS and summary[f"sgpo_minus_{o}"] > 2 * summary[f"sigma_sgpo_minus_{o}"]
        for o in ("sft", "spin")
    )
    share = summary["sgpo_share_of_oracle_gain"]
    share_met = not math.isnan(share) and gain > 0 and share >= ORACLE_SHARE
    lines.append(
        f"Goal: SGPO - SFT = {summary['sgpo_minus_sft']:+.1f} ± {summary['sigma_sgpo_minus_sft']:.1f}, "
        f"SGPO - SPIN = {summary['sgpo_minus_spin']:+.1f} ± {summary['sigma_sgpo_minus_spin']:.1f} points (needs >= "
        f"{GOAL_POINTS:g} each, beyond 2 sigma), SGPO's gain {summary['sgpo_gain']:+.1f} = {100 * share:.0f}% of the "
        f"oracle's (needs >= {100 * ORACLE_SHARE:.0f}%): {'MET' if beats and share_met else 'NOT MET'}."
    )
    return lines


def grid_line(report: dict) -> str:
    """The toy benchmark's grid rule, with one case told apart: a method chosen at the grid's smallest rate whose
    best validation run is no better than the start itself. No rate helps it; a smaller rate only comes closer to
    doing nothing, so extending the grid downwards cannot make an interior choice. That is said, not hidden."""
    grid = report["settings"]["learning_rates"]
    start = report["start"].get(f"validation_{HEADLINE}")
    best = {
        method: max(r["validation"][HEADLINE] for r in report["search"] if r["arm"] == method)
        for method in report["chosen_learning_rate"]
    }
    no_help = [
        method
        for method, rate in report["chosen_learning_rate"].items()
        if len(grid) >= 3 and rate == min(grid) and start is not None and best[method] <= start
    ]
    edge = [method for method in quality.rates_at_the_edge(report) if method not in no_help]
    parts = []
    if edge:
        parts.append(f"NOT a choice for {', '.join(edge)} (chosen at the edge of the grid; extend it)")
    if no_help:
        parts.append(
            f"no rate helps {', '.join(no_help)} on validation (the best, at the smallest rate {min(grid):g}, is no "
            f"better than the start's {100 * start:.1f}%: "
            + ", ".join(f"{m} {100 * best[m]:.1f}%" for m in no_help)
            + "); a smaller rate only comes closer to the start"
        )
    return "Learning-rate grid: " + ("; ".join(parts) if parts else "every chosen rate lies inside it") + "."


def markdown_table(report: dict) -> str:
    settings, start, summary = report["settings"], report["start"], report["summary"]
    room, build = start["validation_headroom"], report["start_build"]
    zero = build["zero_shot_headroom"]["validation"]
    lines = [
        f"Command: `{report['command']}` ({report['date']}, {report['device']}, {report['total_seconds'] / 60:.0f} "
        f"min for this part). Start: SmolLM2-135M-Instruct after LoRA SFT on the task's {build['sft_set_size']} "
        f"SFT rows ({build['curve'][-1]['updates']} updates of {build['settings']['batch_size']}, cosine-decayed "
        f"learning rate, `python benchmarks/real_start.py`, {build['seconds'] / 60:.0f} min). "
        f"Every arm trains a fresh LoRA adapter on that SFT set for {settings['steps']} updates of "
        f"{settings['batch_size']} prompts (sampling temperature {settings['temperature']:g}); learning rate chosen "
        f"on validation from {tuple(settings['learning_rates'])}; {len(settings['seeds'])} seed(s); "
        f"{settings['test_prompts']} test prompts and {settings['held_out_prompts']} prompts of the held-out "
        "constraint family; mean ± standard deviation over seeds, in %.",
        "",
        f"Headroom (validation, {room['k']} samples): zero-shot greedy {100 * zero['greedy']:.1f}%, a sample "
        f"{100 * zero['sample']:.1f}%, pass@{zero['k']} {100 * zero['pass_at_k']:.1f}%; the start greedy "
        f"{100 * room['greedy']:.1f}%, a sample {100 * room['sample']:.1f}%, pass@{room['k']} "
        f"{100 * room['pass_at_k']:.1f}%, {100 * room['mixed']:.0f}% of prompts solved by some but not all samples.",
        "",
        *gate_and_goal_lines(summary),
        grid_line(report),
        "",
        "The headline is the prompt-level accuracy of *sampled* answers (every constraint met and the request "
        f"answered; {settings['eval_samples']} samples per prompt at the training temperature). The rewrite "
        "columns judge SGPO's DPO pairs with the checker (better / worse than the draft), the trainer's "
        "`sgpo/rewrite_closer`, and the share of rewrite tokens copied from the draft.",
        "",
        "| arm | learning rate | test sampled | test greedy | held-out family sampled | held-out family greedy "
        "| rewrite better / worse | rewrite closer | copied from draft | seconds per run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| start | - | {100 * start['sampled_accuracy']:.1f} | {100 * start['greedy_accuracy']:.1f} "
        f"| {100 * start['held_out_sampled_accuracy']:.1f} | {100 * start['held_out_greedy_accuracy']:.1f} "
        "| - | - | - | - |",
    ]
    for arm in report["arms"]:
        runs = [r for r in report["final"] if r["arm"] == arm]
        if not runs:
            continue
        metrics = ("sampled_accuracy", "greedy_accuracy", "held_out_sampled_accuracy", "held_out_greedy_accuracy")
        cells = [quality._mean_std(quality._test_values(report, arm, metric)) for metric in metrics]
        diagnostics = {
            key: statistics.fmean(r["diagnostics"][key] for r in runs)
            for key in ("rewrite_better", "rewrite_worse", "sgpo/rewrite_closer", "copied_share", "tied_pairs")
            if all(key in r["diagnostics"] for r in runs)
        }
        judged = quality.judged_cell(diagnostics)
        seconds = statistics.fmean(r["seconds"] for r in runs)
        lines.append(
            f"| {arm} | {runs[0]['learning_rate']:g} | {' | '.join(cells)} | {judged} "
            f"| {quality._cell(diagnostics, 'sgpo/rewrite_closer')} | {quality._cell(diagnostics, 'copied_share')} "
            f"| {seconds:.0f} |"
        )
    lines += [
        "",
        "The validation search (first seed; validation sampled / greedy accuracy, in %; the SGPO variants use "
        "SGPO's learning rate):",
        "",
        *quality.search_table(report, "sampled_accuracy", "greedy_accuracy"),
    ]
    examples = [r for r in report["final"] if r["arm"] == "sgpo"][:1]
    if examples:
        lines += ["", "Greedy answers of the first SGPO run (test):", ""]
        lines += [f"- {prompt!r} -> {answer!r}" for prompt, answer in examples[0]["test"]["greedy_examples"]]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few steps, one seed, one learning rate (CI)")
    parser.add_argument("--workers", type=int, default=1, help="parallel runs (one CPU thread each)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--steps", type=int, help="override the number of updates")
    parser.add_argument("--learning-rates", type=float, nargs="+", help="override the search grid")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    parser.add_argument("--checkpoint", help="start from this model folder (default: benchmarks/real_start.py's)")
    parser.add_argument("--output-dir", default=quality.RESULTS_DIR)
    parser.add_argument("--render", metavar="JSON", help="only re-render the tables of an earlier run's JSON")
    return parser.parse_args(argv)


def _write(report: dict, output_dir: str) -> None:
    table = markdown_table(report)
    print(table)
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "real_quality.json"), "w") as handle:
        json.dump(report, handle, indent=1)
    with open(os.path.join(output_dir, "real_quality.md"), "w") as handle:
        handle.write(table)


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
    for name in ("steps", "learning_rates", "seeds", "checkpoint"):
        value = getattr(args, name)
        if value:
            setattr(settings, name, tuple(value) if isinstance(value, list) else value)
    return settings


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.render:
        with open(args.render) as handle:
            report = json.load(handle)
        report["summary"] = summarize(report)
        _write(report, args.output_dir)
        return report
    settings = _settings(args)
    settings.checkpoint = settings.checkpoint or str(real_start_dir(quick=args.quick))
    with open(os.path.join(settings.checkpoint, "build.json")) as handle:
        start_build = json.load(handle)
    started = time.perf_counter()
    # Every run is saved under the output folder (keyed by its settings), so parts of the benchmark run one after
    # another, or in the background, and merge: a later part reruns nothing an earlier one saved.
    cache_dir = os.path.join(args.output_dir, "real_quality_runs", _fingerprint(settings))
    arms = [arm for arm in ARMS if arm in args.arms or _saved(cache_dir, arm)]
    report = quality.run_benchmark(
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
    from trl_sgpo import SGPOConfig

    defaults = SGPOConfig(output_dir=tempfile.gettempdir(), use_cpu=True)
    report.update(
        command="python benchmarks/real_quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
        date=date.today().isoformat(),
        device=f"{platform.processor() or platform.machine()} CPU, {args.workers} worker(s), 1 thread each",
        settings=asdict(settings),
        arms=arms,
        start_build=start_build,
        start=_start_scores_cached(settings, cache_dir),
        sgpo_default={
            name: getattr(defaults, name)
            for name in (
                "improver_format",
                "improver_warmup_steps",
                "improver_ready_at",
                "improver_target",
                "improver_loss_weight",
                "policy_sft_weight",
            )
        }
        | {"learning_rate": report["chosen_learning_rate"].get("sgpo"), "use_peft": True, "lora_r": 16},
        total_seconds=time.perf_counter() - started,
    )
    report["summary"] = summarize(report)
    _write(report, args.output_dir)
    return report


def _fingerprint(settings: Settings) -> str:
    """The folder of the runs made with these settings: every setting but the seeds and the grid, which parts vary
    (and which the runs' own file names record)."""
    shared = {k: v for k, v in asdict(settings).items() if k not in ("seeds", "learning_rates", "checkpoint")}
    shared["start"] = os.path.basename(settings.checkpoint)
    digest = hashlib.sha1(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:10]
    return f"{shared['start']}-{digest}"


def _saved(cache_dir: str, arm: str) -> bool:
    return os.path.isdir(cache_dir) and any(name.startswith(f"{arm}-lr") for name in os.listdir(cache_dir))


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


if __name__ == "__main__":
    main()
