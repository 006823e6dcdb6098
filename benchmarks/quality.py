"""Does SGPO work? SGPO against its baselines on the built-in verifiable world, where every answer is checked.

    python benchmarks/quality.py            # the full benchmark (hours of CPU on 1 core; use --workers)
    python benchmarks/quality.py --quick    # a few steps per arm, for CI

Every arm starts from the shipped checkpoint and makes the same number of optimizer updates on the same number of
prompts per update, in both regimes of the world (``plain``: short single answers; ``shifted``: multi-part answers
and references in another surface form than the policy's, the conditions SGPO's argument rests on):

- ``sft``: continued supervised fine-tuning on the references;
- ``spin``: DPO with chosen = reference, rejected = own sample (SGPOTrainer, ``pair_source="spin"``);
- ``online_dpo_oracle``: TRL's OnlineDPOTrainer ranking two own samples with the world's checker as reward (an
  oracle: it uses a reward SGPO does not have);
- ``sgpo_reference`` / ``sgpo_interpolate``: SGPO with each improver target strategy.

The learning rate of every arm is chosen on the validation split from the same grid (one seed per value); the chosen
setting is then run with every seed and reported on the held-out test split, which plays no part in any choice.
For SGPO the DPO steps are diagnosed with the checker: is the improver's rewrite better, worse or no different than
the draft it rewrote?

Output: a markdown table (printed, and written to ``benchmarks/results/quality.md``) and the raw numbers
(``benchmarks/results/quality.json``).
"""

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import date


os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from trl_sgpo.toy import TOY_CHECKPOINT_DIR, TOY_IMPROVER_TEMPLATE, evaluate_model, make_dataset  # noqa: E402
from trl_sgpo.toy.checker import check_answer  # noqa: E402


ARMS = ("sft", "spin", "online_dpo_oracle", "sgpo_reference", "sgpo_interpolate")
REGIMES = ("plain", "shifted")
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


@dataclass
class Settings:
    """What every arm shares: updates, prompts per update, sampling, evaluation sizes, search grid, seeds."""

    steps: int = 60
    batch_size: int = 32
    learning_rates: tuple[float, ...] = (1e-6, 1e-5, 1e-4)
    seeds: tuple[int, ...] = (0, 1, 2)
    validation_prompts: int = 200
    test_prompts: int = 400
    temperature: float = 1.0
    beta: float = 0.1


@dataclass
class Job:
    regime: str
    arm: str
    learning_rate: float
    seed: int
    settings: Settings
    evaluate_test: bool = True


@dataclass
class RunResult:
    regime: str
    arm: str
    learning_rate: float
    seed: int
    validation: dict[str, float]
    test: dict[str, float] | None
    seconds: float
    diagnostics: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- the arms


def _load_start():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(TOY_CHECKPOINT_DIR), AutoTokenizer.from_pretrained(TOY_CHECKPOINT_DIR)


def _train_dataset(job: Job):
    return make_dataset(job.regime, "train", job.settings.steps * job.settings.batch_size, seed=job.seed)


def _max_new_tokens(regime: str) -> int:
    return 48 if regime == "shifted" else 32


def _run_sft(job: Job, model, tokenizer, dataset) -> dict[str, float]:
    """Continued SFT: NLL of the reference completions, same optimizer, updates and prompts per update."""
    torch.manual_seed(job.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=job.learning_rate, weight_decay=0.0)
    model.train()
    rows = dataset.shuffle(seed=job.seed)
    for step in range(job.settings.steps):
        batch = rows[step * job.settings.batch_size : (step + 1) * job.settings.batch_size]
        sequences, masks = [], []
        for prompt, completion in zip(batch["prompt"], batch["completion"]):
            prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
            prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
            full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
            sequences.append(full_ids)
            masks.append([0] * len(prompt_ids) + [1] * (len(full_ids) - len(prompt_ids)))
        width = max(map(len, sequences))
        ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s in sequences])
        loss_mask = torch.tensor([m + [0] * (width - len(m)) for m in masks], dtype=torch.float32)
        attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
        logps = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        loss = -(logps * loss_mask[:, 1:]).sum() / loss_mask[:, 1:].sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {}


def _shared_settings(job: Job, output_dir: str) -> dict:
    """Trainer settings every preference arm shares: updates, prompts per update, schedule, beta, sampling."""
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=job.settings.batch_size,
        max_steps=job.settings.steps,
        learning_rate=job.learning_rate,
        lr_scheduler_type="constant",
        beta=job.settings.beta,
        temperature=job.settings.temperature,
        max_new_tokens=_max_new_tokens(job.regime),
        max_length=320,
        report_to="none",
        save_strategy="no",
        logging_steps=5,  # the sgpo/* statistics of the diagnostics table are read from the logs
        disable_tqdm=True,
        seed=job.seed,
        data_seed=job.seed,
    )


def _sgpo_config(job: Job, output_dir: str, **overrides):
    from trl_sgpo import SGPOConfig

    settings = _shared_settings(job, output_dir)
    settings.update(
        overwrite_output_dir=True,
        improver_template=TOY_IMPROVER_TEMPLATE,
        improver_temperature=0.0,  # greedy rewrites: the improver's best guess, not a sample
    )
    settings.update(overrides)
    return SGPOConfig(**settings)


class PairDiagnostics:
    """Judges each DPO pair with the checker: is the improver's rewrite better than the draft, worse, or equal?"""

    def __init__(self, trainer):
        self.counts = {"better": 0, "worse": 0, "same_score": 0, "identical": 0, "pairs": 0}
        self._gold: list[list[str]] = []
        self._drafts: list[str] = []
        step, sample = trainer.training_step, trainer._sample

        def training_step(model, inputs, *args, **kwargs):
            self._gold = [json.loads(parts) for parts in inputs["answer_parts"]]
            return step(model, inputs, *args, **kwargs)

        def sample_and_judge(model, texts, prompt_ids, prompt_mask, role):
            completions = sample(model, texts, prompt_ids, prompt_mask, role)
            decoded = trainer.processing_class.batch_decode([c.token_ids for c in completions])
            if role == "policy":
                self._drafts = decoded
            elif role == "improver":
                self._judge(decoded)
            return completions

        trainer.training_step, trainer._sample = training_step, sample_and_judge

    def _judge(self, rewrites: list[str]) -> None:
        for gold, draft, rewrite in zip(self._gold, self._drafts, rewrites):
            self.counts["pairs"] += 1
            if draft == rewrite:
                self.counts["identical"] += 1
                continue
            before = check_answer(draft, gold).partial_credit
            after = check_answer(rewrite, gold).partial_credit
            key = "better" if after > before else "worse" if after < before else "same_score"
            self.counts[key] += 1

    def summary(self) -> dict[str, float]:
        pairs = max(self.counts["pairs"], 1)
        return {f"rewrite_{key}": value / pairs for key, value in self.counts.items() if key != "pairs"}


def _run_sgpo(job: Job, model, tokenizer, dataset, **overrides) -> dict[str, float]:
    from trl_sgpo import SGPOTrainer

    with tempfile.TemporaryDirectory() as output_dir:
        trainer = SGPOTrainer(
            model=model,
            args=_sgpo_config(job, output_dir, **overrides),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        diagnostics = PairDiagnostics(trainer) if overrides.get("pair_source", "sgpo") == "sgpo" else None
        trainer.train()
        logged = _mean_logs(trainer.state.log_history)
    return {**logged, **(diagnostics.summary() if diagnostics else {})}


def _mean_logs(history: list[dict]) -> dict[str, float]:
    keys = (
        "sgpo/pairs_kept",
        "sgpo/pairs_identical",
        "sgpo/pairs_truncated",
        "sgpo/edit_distance",
        "sgpo/response_length",
        "sgpo/improved_length",
        "sgpo/eos_rate",
        "sgpo/improver_eos_rate",
    )
    values = {key: [log[key] for log in history if key in log] for key in keys}
    return {key: statistics.fmean(v) for key, v in values.items() if v}


def _checker_reward(completions, answer_parts, **kwargs) -> list[float]:
    """The oracle reward for OnlineDPO: the checker's partial credit of each completion."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [check_answer(text, json.loads(parts)).partial_credit for text, parts in zip(texts, answer_parts)]


def _run_online_dpo(job: Job, model, tokenizer, dataset) -> dict[str, float]:
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    with tempfile.TemporaryDirectory() as output_dir:
        config = OnlineDPOConfig(**_shared_settings(job, output_dir), bf16=False, gradient_checkpointing=False)
        trainer = OnlineDPOTrainer(
            model=model, reward_funcs=_checker_reward, args=config, train_dataset=dataset, processing_class=tokenizer
        )
        trainer.train()
    return {}


def run_job(job: Job) -> RunResult:
    """Train one arm from the shipped checkpoint and score it on validation (and test)."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    model, tokenizer = _load_start()
    dataset = _train_dataset(job)
    if job.arm == "sft":
        diagnostics = _run_sft(job, model, tokenizer, dataset)
    elif job.arm == "spin":
        diagnostics = _run_sgpo(job, model, tokenizer, dataset, pair_source="spin")
    elif job.arm == "online_dpo_oracle":
        diagnostics = _run_online_dpo(job, model, tokenizer, dataset)
    elif job.arm == "sgpo_reference":
        diagnostics = _run_sgpo(job, model, tokenizer, dataset, improver_target="reference")
    elif job.arm == "sgpo_interpolate":
        diagnostics = _run_sgpo(job, model, tokenizer, dataset, improver_target="interpolate")
    else:
        raise ValueError(f"unknown arm {job.arm!r}")
    seconds = time.perf_counter() - start
    validation = _scores(model, tokenizer, job, "validation", job.settings.validation_prompts)
    test = _scores(model, tokenizer, job, "test", job.settings.test_prompts) if job.evaluate_test else None
    return RunResult(job.regime, job.arm, job.learning_rate, job.seed, validation, test, seconds, diagnostics)


def _scores(model, tokenizer, job: Job, split: str, num_prompts: int) -> dict[str, float]:
    dataset = make_dataset(job.regime, split, num_prompts, seed=0)
    result = evaluate_model(model, tokenizer, dataset)
    return {"exact_match": result["exact_match"], "partial_credit": result["partial_credit"]}


def start_scores(settings: Settings) -> dict[str, dict[str, float]]:
    torch.set_num_threads(1)
    model, tokenizer = _load_start()
    scores = {}
    for regime in REGIMES:
        dataset = make_dataset(regime, "test", settings.test_prompts, seed=0)
        result = evaluate_model(model, tokenizer, dataset)
        scores[regime] = {"exact_match": result["exact_match"], "partial_credit": result["partial_credit"]}
    return scores


# ------------------------------------------------------------------------------------------------- the protocol


def _run_all(jobs: list[Job], workers: int) -> list[RunResult]:
    if workers <= 1:
        return [run_job(job) for job in jobs]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return pool.map(run_job, jobs, chunksize=1)


def run_benchmark(settings: Settings, arms: tuple[str, ...], regimes: tuple[str, ...], workers: int) -> dict:
    """Search on validation (first seed), then every seed of the chosen setting, reported on test."""
    first_seed, other_seeds = settings.seeds[0], settings.seeds[1:]
    search = [Job(r, a, lr, first_seed, settings) for r in regimes for a in arms for lr in settings.learning_rates]
    search_results = _run_all(search, workers)
    chosen = {}
    for regime in regimes:
        for arm in arms:
            candidates = [r for r in search_results if (r.regime, r.arm) == (regime, arm)]
            chosen[(regime, arm)] = max(candidates, key=lambda r: r.validation["exact_match"]).learning_rate
    repeats = [Job(r, a, chosen[(r, a)], seed, settings) for (r, a) in chosen for seed in other_seeds]
    repeat_results = _run_all(repeats, workers)
    final = [r for r in search_results if r.learning_rate == chosen[(r.regime, r.arm)]] + repeat_results
    return {
        "search": [asdict(r) for r in search_results],
        "final": [asdict(r) for r in final],
        "chosen_learning_rate": {f"{r}/{a}": lr for (r, a), lr in chosen.items()},
    }


def _mean_std(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    spread = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {spread:.1f}"


def markdown_table(report: dict) -> str:
    settings = report["settings"]
    lines = [
        f"Command: `{report['command']}` ({report['date']}, {report['device']}; {settings['steps']} updates of "
        f"{settings['batch_size']} prompts per arm; learning rate chosen on validation from "
        f"{settings['learning_rates']}; {len(settings['seeds'])} seed(s); {settings['test_prompts']} held-out "
        "prompts per regime; mean ± standard deviation over seeds, in %).",
        "",
        "| regime | arm | learning rate | exact match | partial credit | seconds per run |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for regime, scores in report["start"].items():
        lines.append(
            f"| {regime} | start (shipped checkpoint) | - | {100 * scores['exact_match']:.1f} | "
            f"{100 * scores['partial_credit']:.1f} | - |"
        )
        for arm in report["arms"]:
            runs = [r for r in report["final"] if (r["regime"], r["arm"]) == (regime, arm)]
            if not runs:
                continue
            exact = _mean_std([r["test"]["exact_match"] for r in runs])
            partial = _mean_std([r["test"]["partial_credit"] for r in runs])
            seconds = statistics.fmean(r["seconds"] for r in runs)
            lines.append(f"| {regime} | {arm} | {runs[0]['learning_rate']:g} | {exact} | {partial} | {seconds:.0f} |")
    lines += [
        "",
        "The validation search (first seed; validation split; the learning rate with the best exact match was kept, "
        "ties going to the first value):",
        "",
        "| regime | arm | " + " | ".join(f"lr {lr:g}: exact / partial" for lr in settings["learning_rates"]) + " |",
        "| --- | --- | " + " | ".join("---" for _ in settings["learning_rates"]) + " |",
    ]
    for regime in report["regimes"]:
        for arm in report["arms"]:
            cells = []
            for lr in settings["learning_rates"]:
                runs = [
                    r for r in report["search"] if (r["regime"], r["arm"], r["learning_rate"]) == (regime, arm, lr)
                ]
                scores = runs[0]["validation"] if runs else None
                cells.append(
                    f"{100 * scores['exact_match']:.1f} / {100 * scores['partial_credit']:.1f}" if scores else "-"
                )
            lines.append(f"| {regime} | {arm} | " + " | ".join(cells) + " |")
    diagnosed = [r for r in report["search"] if "rewrite_better" in r["diagnostics"]]
    if diagnosed:
        lines += [
            "",
            "SGPO's DPO pairs judged by the checker, per learning rate of the search (first seed): the fraction of "
            "pairs whose rewrite scored better / worse / the same as the draft, or was identical to it; the "
            "fraction kept by the pair filter; the mean token edit distance between draft and rewrite.",
            "",
            "| regime | arm | lr | better | worse | same score | identical | kept | edit distance |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for run in diagnosed:
            d = run["diagnostics"]

            def cell(key, digits=2, d=d):
                return f"{d[key]:.{digits}f}" if key in d else "-"

            lines.append(
                f"| {run['regime']} | {run['arm']} | {run['learning_rate']:g} | {cell('rewrite_better')} | "
                f"{cell('rewrite_worse')} | {cell('rewrite_same_score')} | {cell('rewrite_identical')} | "
                f"{cell('sgpo/pairs_kept')} | {cell('sgpo/edit_distance', 1)} |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few steps, one seed, one learning rate (CI)")
    parser.add_argument("--workers", type=int, default=1, help="parallel runs (one CPU thread each)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    parser.add_argument("--steps", type=int, help="override the number of updates")
    parser.add_argument("--output-dir", default=RESULTS_DIR)
    parser.add_argument("--render", metavar="JSON", help="only re-render the tables of an earlier run's JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.render:  # the tables of an earlier run, e.g. after a change to how they are laid out
        with open(args.render) as handle:
            report = json.load(handle)
        table = markdown_table(report)
        print(table)
        with open(os.path.join(args.output_dir, "quality.md"), "w") as handle:
            handle.write(table)
        return report
    if args.quick:
        settings = Settings(
            steps=4, batch_size=8, learning_rates=(1e-4,), seeds=(0,), validation_prompts=32, test_prompts=32
        )
    else:
        settings = Settings()
    if args.steps:
        settings.steps = args.steps
    started = time.perf_counter()
    report = run_benchmark(settings, tuple(args.arms), tuple(args.regimes), args.workers)
    report.update(
        command="python benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
        date=date.today().isoformat(),
        device=f"{platform.processor() or platform.machine()} CPU, {args.workers} worker(s), 1 thread each",
        settings=asdict(settings),
        arms=list(args.arms),
        regimes=list(args.regimes),
        start={r: s for r, s in start_scores(settings).items() if r in args.regimes},
        total_seconds=time.perf_counter() - started,
    )
    table = markdown_table(report)
    print(table)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "quality.json"), "w") as handle:
        json.dump(report, handle, indent=1)
    with open(os.path.join(args.output_dir, "quality.md"), "w") as handle:
        handle.write(table)
    return report


if __name__ == "__main__":
    main()
