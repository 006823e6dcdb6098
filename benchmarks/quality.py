"""Does SGPO work? SGPO against its baselines and ablations on the built-in verifiable world.

    python benchmarks/quality.py --workers 2   # the full benchmark (3 seeds; see the results file for its time)
    python benchmarks/quality.py --quick       # a few steps per arm, for CI

The testbed is the paper's regime: the start is the shipped checkpoint, an SFT model trained on one fixed, finite SFT
set (prompts and references of the world's ``short`` regime) to its validation plateau, so that more SFT on the same
data no longer helps. Every arm then trains on that same SFT set, with the same number of optimizer updates and of
prompts per update (improver updates count as updates):

- ``sft``: continued supervised fine-tuning on the references;
- ``spin``: DPO with chosen = reference, rejected = own sample (SGPOTrainer, ``pair_source="spin"``);
- ``online_dpo_oracle``: TRL's OnlineDPOTrainer ranking its two samples per prompt with the world's checker as
  reward, tied pairs (both samples scored the same) made identical so that they carry no gradient, and counted. An
  oracle: it uses a reward SGPO does not have. It is the sensitivity gate: if it cannot beat the start by
  ``GATE_POINTS`` points of the headline metric, the testbed cannot tell methods apart, and the world must change;
- ``sgpo``: SGPO with the package's defaults (a short Step 1, then DPO steps; ``improver_format="auto"``, which is the
  next turn of the conversation on this world);
- ablations of SGPO, each changing one thing: ``sgpo_no_step1`` (no warm-up improver phase), ``sgpo_no_sft_mix``
  (``policy_sft_weight=0``), ``sgpo_sees_reference`` (the improver's instruction also shows the reference),
  ``sgpo_template`` (the single-turn template format), and ``edit_pairs`` (chosen = the draft with half of its edits
  toward the reference applied by arithmetic, no model).

The learning rate of each method is chosen on the validation split from one grid (first seed); the SGPO ablations
use SGPO's. The chosen settings then run with every seed and are reported on the held-out test split, which plays no
part in any choice. For every arm with an improver, the DPO pairs are judged with the checker: is the rewrite better,
worse or no different than the draft it rewrote?

Output: a markdown table (printed, and written to ``benchmarks/results/quality.md``) and the raw numbers with a
``summary`` (``benchmarks/results/quality.json``).
"""

import argparse
import difflib
import functools
import json
import math
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

from trl_sgpo.toy import (  # noqa: E402
    TOY_CHECKPOINT_DIR,
    TOY_IMPROVER_INSTRUCTION,
    TOY_IMPROVER_TEMPLATE,
    evaluate_model,
    make_dataset,
    toy_checkpoint_metadata,
)
from trl_sgpo.toy.build_checkpoint import collate_conversations, encode_conversation  # noqa: E402
from trl_sgpo.toy.checker import check_answer  # noqa: E402
from trl_sgpo.toy.world import pass_at_k  # noqa: E402


# arm -> (method whose learning rate it uses, SGPOConfig overrides or None for a non-SGPO arm)
ARMS: dict[str, tuple[str, dict | None]] = {
    "sft": ("sft", None),
    "spin": ("spin", {"pair_source": "spin"}),
    "online_dpo_oracle": ("online_dpo_oracle", None),
    "sgpo": ("sgpo", {}),
    "sgpo_no_step1": ("sgpo", {"improver_warmup_steps": 0}),
    "sgpo_no_sft_mix": ("sgpo", {"policy_sft_weight": 0.0}),
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
GATE_POINTS = 8.0  # the oracle must beat the start by this many test points of the headline metric
GOAL_POINTS = 5.0  # SGPO's goal over SPIN and over continued SFT, in test points of the headline, beyond 2 sigma
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


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


@dataclass
class Job:
    arm: str
    learning_rate: float
    seed: int
    settings: Settings
    evaluate_test: bool = True


@dataclass
class RunResult:
    arm: str
    learning_rate: float
    seed: int
    validation: dict[str, float]
    test: dict[str, float] | None
    seconds: float
    diagnostics: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- the data


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


def _regime(checkpoint: str) -> str:
    return toy_checkpoint_metadata(checkpoint)["sft_data"]["regime"]


def _load_start(checkpoint: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(checkpoint), AutoTokenizer.from_pretrained(checkpoint)


def _train_rows(job: Job):
    """This seed's ``steps * batch_size`` rows of the SFT set, in this seed's order."""
    rows = sft_set(job.settings.checkpoint).shuffle(seed=job.seed)
    return rows.select(range(min(len(rows), job.settings.steps * job.settings.batch_size)))


# ---------------------------------------------------------------------------------------------------- the arms


def _run_sft(job: Job, model, tokenizer, dataset) -> dict[str, float]:
    """Continued SFT: NLL of the reference completions, same optimizer, updates and prompts per update."""
    torch.manual_seed(job.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=job.learning_rate, weight_decay=0.0)
    warmup_steps = math.ceil(job.settings.warmup * job.settings.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup_steps + 1)))
    model.train()
    for step in range(job.settings.steps):
        batch = dataset[step * job.settings.batch_size : (step + 1) * job.settings.batch_size]
        # The shipped checkpoint's own SFT: the same encoding (chat template, labels on the answer and its EOS) and
        # the same loss (the model's token-mean NLL of the labels).
        encoded = [
            encode_conversation(tokenizer, prompt, completion[0]["content"])
            for prompt, completion in zip(batch["prompt"], batch["completion"])
        ]
        loss = model(**collate_conversations(encoded, tokenizer.pad_token_id)).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return {}


def _shared_settings(job: Job, output_dir: str) -> dict:
    """Trainer settings every preference arm shares: updates, prompts per update, beta, sampling."""
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
        max_length=256,
        report_to="none",
        save_strategy="no",
        logging_steps=min(5, job.settings.steps),  # the sgpo/* statistics of the tables are read from the logs
        disable_tqdm=True,
        seed=job.seed,
        data_seed=job.seed,
        use_cpu=True,
    )


def copied_share(draft_ids: list[int], rewrite_ids: list[int]) -> float:
    """The share of the rewrite's tokens copied from the draft: the tokens of their longest matching blocks
    (difflib), over the rewrite's length. What a rewrite speculated from the draft could accept without sampling."""
    if not rewrite_ids:
        return 0.0
    blocks = difflib.SequenceMatcher(a=draft_ids, b=rewrite_ids, autojunk=False).get_matching_blocks()
    return sum(block.size for block in blocks) / len(rewrite_ids)


class PairDiagnostics:
    """Judges each DPO pair with the checker: is the improver's rewrite better than the draft, worse, or equal?
    Also measures how much of each rewrite is copied from its draft (``copied_share``).

    It reads the trainer's public per-step record (`trl_sgpo.records.StepRecord`, through ``step_listeners``): the
    rows' ``gold_column``, the drafts and the rewrites of every DPO step whose chosen side the improver wrote.
    ``score(text, gold)`` is the checker's partial credit of ``text`` given a row's ``gold_column`` value.
    """

    def __init__(self, trainer, gold_column: str, score, skip_special_tokens: bool = False):
        self.counts = {"better": 0, "worse": 0, "same_score": 0, "identical": 0, "pairs": 0}
        self.copied: list[float] = []
        self._score = score
        self._gold_column = gold_column
        self._decode = functools.partial(
            trainer.processing_class.batch_decode, skip_special_tokens=skip_special_tokens
        )
        trainer.step_listeners.append(self.on_step_record)

    def on_step_record(self, record) -> None:
        if record.rewrites is None:
            return
        draft_ids = [list(c.token_ids) for c in record.drafts]
        rewrite_ids = [list(c.token_ids) for c in record.rewrites]
        self._gold, self._drafts = list(record.rows[self._gold_column]), self._decode(draft_ids)
        self._judge(self._decode(rewrite_ids))
        self.copied += [copied_share(d, r) for d, r in zip(draft_ids, rewrite_ids)]

    def _judge(self, rewrites: list[str]) -> None:
        for gold, draft, rewrite in zip(self._gold, self._drafts, rewrites):
            self.counts["pairs"] += 1
            if draft == rewrite:
                self.counts["identical"] += 1
                continue
            before, after = self._score(draft, gold), self._score(rewrite, gold)
            key = "better" if after > before else "worse" if after < before else "same_score"
            self.counts[key] += 1

    def summary(self) -> dict[str, float]:
        pairs = max(self.counts["pairs"], 1)
        shares = {f"rewrite_{key}": value / pairs for key, value in self.counts.items() if key != "pairs"}
        return shares | ({"copied_share": statistics.fmean(self.copied)} if self.copied else {})


def _toy_score(text: str, answer_parts: str) -> float:
    return check_answer(text, json.loads(answer_parts)).partial_credit


def _run_sgpo(job: Job, model, tokenizer, dataset, overrides: dict) -> dict[str, float]:
    from trl_sgpo import SGPOConfig, SGPOTrainer

    with tempfile.TemporaryDirectory() as output_dir:
        settings = {
            **_shared_settings(job, output_dir),
            "overwrite_output_dir": True,
            "improver_template": TOY_IMPROVER_TEMPLATE,
            "improver_instruction": TOY_IMPROVER_INSTRUCTION,  # the next turn ("auto" picks it on this world)
            "improver_temperature": 0.0,  # greedy rewrites: the improver's best guess, not a sample
            **overrides,
        }
        trainer = SGPOTrainer(
            model=model, args=SGPOConfig(**settings), train_dataset=dataset, processing_class=tokenizer
        )
        judged = settings.get("pair_source", "sgpo") == "sgpo"
        diagnostics = PairDiagnostics(trainer, "answer_parts", _toy_score) if judged else None
        trainer.train()
        logged = _mean_logs(trainer.state.log_history)
    return {**logged, **(diagnostics.summary() if diagnostics else {})}


def _mean_logs(history: list[dict]) -> dict[str, float]:
    keys = (
        "sgpo/pairs_kept",
        "sgpo/pairs_identical",
        "sgpo/pairs_truncated",
        "sgpo/edit_distance",
        "sgpo/rewrite_closer",
        "sgpo/improver_loss",
        "sgpo/policy_sft_loss",
        "sgpo/eos_rate",
        "sgpo/improver_eos_rate",
    )
    values = {key: [log[key] for log in history if key in log] for key in keys}
    return {key: statistics.fmean(v) for key, v in values.items() if v}


def _checker_reward(completions, answer_parts, **kwargs) -> list[float]:
    """The oracle reward for OnlineDPO: the checker's partial credit of each completion."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [check_answer(text, json.loads(parts)).partial_credit for text, parts in zip(texts, answer_parts)]


def tie_dropping_online_dpo(dataset, gold_column: str, score):
    """TRL's OnlineDPOTrainer whose tied pairs carry no gradient.

    Upstream ranks the two samples of a prompt even when the reward scores them the same, so a tie becomes a pair
    ranked at random: noise that DPO learns from. Here, right after generation, a tied prompt's second sample is
    replaced by its first; identical sides give the DPO loss a zero gradient. The loss is still averaged over all
    prompts, as upstream does. The tie rate is counted. ``score(text, gold)`` is the checker, ``gold`` a row's
    ``gold_column`` value, found by the prompt's last message.
    """
    from trl.experimental.online_dpo import OnlineDPOTrainer

    gold = {}

    class TieDroppingOnlineDPOTrainer(OnlineDPOTrainer):
        ties = 0
        pairs = 0

        def _generate(self, model, prompts, images=None):
            prompt_ids, prompt_mask, completion_ids, completion_mask, vision = super()._generate(
                model, prompts, images
            )
            texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
            n = len(prompts)
            for i, prompt in enumerate(prompts):
                row_gold = gold[prompt[-1]["content"]]
                self.pairs += 1
                if score(texts[i], row_gold) == score(texts[i + n], row_gold):
                    self.ties += 1
                    completion_ids[i + n], completion_mask[i + n] = completion_ids[i], completion_mask[i]
            return prompt_ids, prompt_mask, completion_ids, completion_mask, vision

    for row in dataset:
        gold[row["prompt"][-1]["content"]] = row[gold_column]
    return TieDroppingOnlineDPOTrainer


def _run_online_dpo(job: Job, model, tokenizer, dataset) -> dict[str, float]:
    from trl.experimental.online_dpo import OnlineDPOConfig

    trainer_class = tie_dropping_online_dpo(dataset, "answer_parts", _toy_score)
    with tempfile.TemporaryDirectory() as output_dir:
        config = OnlineDPOConfig(**_shared_settings(job, output_dir), bf16=False, gradient_checkpointing=False)
        trainer = trainer_class(
            model=model, reward_funcs=_checker_reward, args=config, train_dataset=dataset, processing_class=tokenizer
        )
        trainer.train()
    return {"tied_pairs": trainer.ties / max(trainer.pairs, 1)}


def run_job(job: Job) -> RunResult:
    """Train one arm from the shipped checkpoint and score it on validation (and test)."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    model, tokenizer = _load_start(job.settings.checkpoint)
    dataset = _train_rows(job)
    _, overrides = ARMS[job.arm]
    if job.arm == "sft":
        diagnostics = _run_sft(job, model, tokenizer, dataset)
    elif job.arm == "online_dpo_oracle":
        diagnostics = _run_online_dpo(job, model, tokenizer, dataset)
    else:
        diagnostics = _run_sgpo(job, model, tokenizer, dataset, overrides)
    seconds = time.perf_counter() - start
    regime = _regime(job.settings.checkpoint)
    validation = _scores(model, tokenizer, regime, "validation", job.settings.validation_prompts, job.settings)
    test = (
        _scores(model, tokenizer, regime, "test", job.settings.test_prompts, job.settings)
        if job.evaluate_test
        else None
    )
    return RunResult(job.arm, job.learning_rate, job.seed, validation, test, seconds, diagnostics)


def _scores(model, tokenizer, regime: str, split: str, num_prompts: int, settings: Settings) -> dict[str, float]:
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
    model, tokenizer = _load_start(settings.checkpoint)
    regime = _regime(settings.checkpoint)
    scores = _scores(model, tokenizer, regime, "test", settings.test_prompts, settings)
    validation = make_dataset(regime, "validation", settings.validation_prompts, seed=0)
    headroom = pass_at_k(model, tokenizer, validation, settings.pass_at_k, settings.temperature)
    return {**scores, "validation_headroom": headroom}


# ------------------------------------------------------------------------------------------------- the protocol


def _result_path(cache_dir: str, job: Job) -> str:
    name = f"{job.arm}-lr{job.learning_rate:g}-seed{job.seed}-test{int(job.evaluate_test)}.json"
    return os.path.join(cache_dir, name)


def _run_all(jobs: list[Job], workers: int, runner=None, cache_dir: str | None = None) -> list[RunResult]:
    """Every job's result; with ``cache_dir``, a job whose result an earlier part saved there is not run again."""
    runner = runner or run_job
    cached = {}
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        for index, job in enumerate(jobs):
            if os.path.isfile(path := _result_path(cache_dir, job)):
                with open(path) as handle:
                    cached[index] = RunResult(**json.load(handle))
    todo = [job for index, job in enumerate(jobs) if index not in cached]
    fresh = []

    def keep(job: Job, result: RunResult) -> None:  # saved as each run ends: a part stopped midway loses one run
        fresh.append(result)
        if cache_dir:
            with open(_result_path(cache_dir, job), "w") as handle:
                json.dump(asdict(result), handle, indent=1)

    if workers <= 1 or len(todo) <= 1:
        for job in todo:
            keep(job, runner(job))
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for job, result in zip(todo, pool.imap(runner, todo, chunksize=1)):
                keep(job, result)
    fresh_results = iter(fresh)
    return [cached[index] if index in cached else next(fresh_results) for index in range(len(jobs))]


def run_benchmark(
    settings,
    arms: tuple[str, ...],
    workers: int,
    *,
    arm_table: dict = ARMS,
    searched_methods: tuple[str, ...] = SEARCHED,
    runner=None,
    headline: str = HEADLINE,
    cache_dir: str | None = None,
    only_cached: tuple[str, ...] = (),
) -> dict:
    """Search each method's learning rate on validation (first seed), then run every seed of the chosen settings.

    The toy world's arms by default; benchmarks/real_quality.py passes its own arms, runner and headline. Arms in
    ``only_cached`` are not run: their results saved in ``cache_dir`` by an earlier part are merged in, if any."""

    def runnable(job: Job) -> bool:
        return job.arm not in only_cached or os.path.isfile(_result_path(cache_dir, job))

    first_seed, other_seeds = settings.seeds[0], settings.seeds[1:]
    searched = [arm for arm in searched_methods if any(arm_table[a][0] == arm for a in arms)]
    search = [Job(arm, lr, first_seed, settings) for arm in searched for lr in settings.learning_rates]
    search_results = _run_all([job for job in search if runnable(job)], workers, runner, cache_dir)
    searched = [method for method in searched if any(r.arm == method for r in search_results)]
    chosen = {
        method: max((r for r in search_results if r.arm == method), key=lambda r: r.validation[headline]).learning_rate
        for method in searched
    }
    kept = [r for r in search_results if r.arm in arms and r.learning_rate == chosen[r.arm]]
    done = {(r.arm, r.seed) for r in kept}
    repeats = [
        Job(arm, chosen[arm_table[arm][0]], seed, settings)
        for arm in arms
        if arm_table[arm][0] in chosen
        for seed in settings.seeds
        if (arm, seed) not in done and (seed in other_seeds or arm not in searched_methods)
    ]
    final = kept + _run_all([job for job in repeats if runnable(job)], workers, runner, cache_dir)
    final.sort(key=lambda r: (list(arms).index(r.arm), r.seed))
    return {
        "search": [asdict(r) for r in search_results],
        "final": [asdict(r) for r in final],
        "chosen_learning_rate": chosen,
    }


def _test_values(report: dict, arm: str, metric: str = HEADLINE) -> list[float]:
    return [100 * r["test"][metric] for r in report["final"] if r["arm"] == arm]


def difference(report: dict, arm: str, other: str, metric: str = HEADLINE) -> tuple[float, float]:
    """Mean difference of a test metric (points) and its sigma: sqrt(sd_a^2/n_a + sd_b^2/n_b) over seeds."""
    a, b = _test_values(report, arm, metric), _test_values(report, other, metric)
    if not a or not b:
        return math.nan, math.nan
    variance = sum(statistics.variance(v) / len(v) if len(v) > 1 else 0.0 for v in (a, b))
    return statistics.fmean(a) - statistics.fmean(b), math.sqrt(variance)


def summarize(report: dict) -> dict:
    """The headline numbers: the oracle's gain (the gate), and SGPO against SPIN and continued SFT (the goal)."""
    start = 100 * report["start"][HEADLINE]
    oracle = _test_values(report, "online_dpo_oracle")
    sgpo_minus_spin, sigma_spin = difference(report, "sgpo", "spin")
    sgpo_minus_sft, sigma_sft = difference(report, "sgpo", "sft")
    return {
        "start": start,
        "oracle_gain": statistics.fmean(oracle) - start if oracle else math.nan,
        "sgpo_minus_spin": sgpo_minus_spin,
        "sigma_sgpo_minus_spin": sigma_spin,
        "sgpo_minus_sft": sgpo_minus_sft,
        "sigma_sgpo_minus_sft": sigma_sft,
        "sgpo_default": report.get("sgpo_default", {}),
    }


def gate_and_goal_lines(summary: dict) -> list[str]:
    """The gate and the goal as the report states them; "not run" where their arms were left out of ``--arms``."""
    gain = summary["oracle_gain"]
    if math.isnan(gain):
        gate_line = "Sensitivity gate: not run (it needs the online_dpo_oracle arm, which --arms left out)."
    else:
        gate = "PASS" if gain >= GATE_POINTS else "FAIL: the testbed cannot tell methods apart; change the world"
        gate_line = (
            f"Sensitivity gate: the oracle arm gains {gain:+.1f} points of test sampled exact match over the start "
            f"(needs >= {GATE_POINTS:g}): {gate}."
        )
    others = ("spin", "sft")
    if any(math.isnan(summary[f"sgpo_minus_{other}"]) for other in others):
        return [gate_line, "Goal: not judged (it needs the sgpo, spin and sft arms, which --arms left out)."]
    goal_met = all(
        summary[f"sgpo_minus_{other}"] >= GOAL_POINTS
        and summary[f"sgpo_minus_{other}"] > 2 * summary[f"sigma_sgpo_minus_{other}"]
        for other in others
    )
    return [
        gate_line,
        f"Goal: SGPO - SPIN = {summary['sgpo_minus_spin']:+.1f} ± {summary['sigma_sgpo_minus_spin']:.1f} and "
        f"SGPO - SFT = {summary['sgpo_minus_sft']:+.1f} ± {summary['sigma_sgpo_minus_sft']:.1f} points "
        f"(needs >= {GOAL_POINTS:g} each, beyond 2 sigma): {'MET' if goal_met else 'NOT MET'}.",
    ]


def rates_at_the_edge(report: dict) -> list[str]:
    """The methods whose chosen learning rate is the smallest or largest of the grid: not a choice, a bound."""
    grid = report["settings"]["learning_rates"]
    if len(grid) < 3:  # a one- or two-value grid (``--quick``) has no inside: every rate is at its edge
        return list(report["chosen_learning_rate"])
    return [method for method, rate in report["chosen_learning_rate"].items() if rate in (min(grid), max(grid))]


def grid_line(report: dict) -> str:
    """Whether every searched method's chosen rate lies inside the grid, as the report states it."""
    edge = rates_at_the_edge(report)
    if not edge:
        return "Learning-rate grid: every chosen rate lies inside it."
    return f"Learning-rate grid: NOT a choice for {', '.join(edge)} (chosen at the edge of the grid; extend it)."


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ± {spread:.1f}"


def _cell(diagnostics: dict, key: str, digits: int = 2) -> str:
    return f"{diagnostics[key]:.{digits}f}" if key in diagnostics else "-"


def judged_cell(diagnostics: dict) -> str:
    """The pair-verdict cell: rewrites better / worse than their drafts, or the oracle's share of tied pairs."""
    if "rewrite_better" in diagnostics:
        return f"{_cell(diagnostics, 'rewrite_better')} / {_cell(diagnostics, 'rewrite_worse')}"
    if "tied_pairs" in diagnostics:
        return f"(tied pairs {_cell(diagnostics, 'tied_pairs')})"
    return "-"


def search_table(report: dict, sampled: str, greedy: str) -> list[str]:
    """The validation search as table rows: each method's sampled / greedy score at each learning rate."""
    grid = report["settings"]["learning_rates"]
    lines = [
        "| method | " + " | ".join(f"lr {lr:g}" for lr in grid) + " |",
        "| --- | " + " | ".join("---" for _ in grid) + " |",
    ]
    for method in report["chosen_learning_rate"]:
        cells = []
        for lr in grid:
            runs = [r for r in report["search"] if (r["arm"], r["learning_rate"]) == (method, lr)]
            scores = runs[0]["validation"] if runs else {}
            cells.append(f"{100 * scores[sampled]:.1f} / {100 * scores[greedy]:.1f}" if scores else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def markdown_table(report: dict) -> str:
    settings, start = report["settings"], report["start"]
    headroom = start["validation_headroom"]
    lines = [
        f"Command: `{report['command']}` ({report['date']}, {report['device']}, {report['total_seconds'] / 60:.0f} "
        f"min). Start: the shipped checkpoint, SFT to its validation plateau on {report['sft_set_size']} prompts of "
        f"the `{report['regime']}` regime; every arm trains on that SFT set for {settings['steps']} updates of "
        f"{settings['batch_size']} prompts (sampling temperature {settings['temperature']:g}). Learning rate chosen "
        f"on validation from {tuple(settings['learning_rates'])}; {len(settings['seeds'])} seed(s); "
        f"{settings['test_prompts']} held-out test prompts; mean ± standard deviation over seeds, in %.",
        "",
        f"Headroom of the start (validation): greedy exact match {100 * headroom['greedy']:.1f}%, a sample "
        f"{100 * headroom['sample']:.1f}%, pass@{headroom['k']} {100 * headroom['pass_at_k']:.1f}%; "
        f"{100 * headroom['mixed']:.0f}% of prompts are solved by some but not all of {headroom['k']} samples.",
        "",
        *gate_and_goal_lines(report["summary"]),
        grid_line(report),
        "",
        "The headline is *sampled* exact match: the exact match of answers sampled at the training temperature "
        f"({settings['eval_samples']} per prompt, i.e. pass@1), the distribution on-policy methods train. Greedy "
        "exact match and partial credit are of greedy answers. The oracle's tied pairs are the share of its pairs "
        "whose two samples the checker scored the same.",
        "",
        "| arm | learning rate | test sampled exact match | test greedy exact match | test greedy partial credit "
        "| rewrite better / worse (checker) | rewrite closer to reference | seconds per run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| start (shipped checkpoint) | - | {100 * start['sampled_exact_match']:.1f} "
        f"| {100 * start['exact_match']:.1f} | {100 * start['partial_credit']:.1f} | - | - | - |",
    ]
    for arm in report["arms"]:
        runs = [r for r in report["final"] if r["arm"] == arm]
        if not runs:
            continue
        exact = _mean_std(_test_values(report, arm, "exact_match"))
        partial = _mean_std(_test_values(report, arm, "partial_credit"))
        sampled = _mean_std(_test_values(report, arm, "sampled_exact_match"))
        diagnostics = {
            key: statistics.fmean(r["diagnostics"][key] for r in runs)
            for key in ("rewrite_better", "rewrite_worse", "sgpo/rewrite_closer", "tied_pairs")
            if all(key in r["diagnostics"] for r in runs)
        }
        judged = judged_cell(diagnostics)
        seconds = statistics.fmean(r["seconds"] for r in runs)
        lines.append(
            f"| {arm} | {runs[0]['learning_rate']:g} | {sampled} | {exact} | {partial} | {judged} | "
            f"{_cell(diagnostics, 'sgpo/rewrite_closer')} | {seconds:.0f} |"
        )
    lines += [
        "",
        "The validation search (first seed; validation sampled / greedy exact match, in %; the best sampled exact "
        "match was kept, ties going to the first value; the SGPO ablations use SGPO's learning rate):",
        "",
        *search_table(report, "sampled_exact_match", "exact_match"),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few steps, one seed, one learning rate (CI)")
    parser.add_argument("--workers", type=int, default=1, help="parallel runs (one CPU thread each)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--steps", type=int, help="override the number of updates")
    parser.add_argument("--learning-rates", type=float, nargs="+", help="override the search grid")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    parser.add_argument("--checkpoint", help="start from this toy checkpoint (default: the shipped one)")
    parser.add_argument("--output-dir", default=RESULTS_DIR)
    parser.add_argument("--render", metavar="JSON", help="only re-render the tables of an earlier run's JSON")
    return parser.parse_args(argv)


def _write(report: dict, output_dir: str) -> None:
    table = markdown_table(report)
    print(table)
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "quality.json"), "w") as handle:
        json.dump(report, handle, indent=1)
    with open(os.path.join(output_dir, "quality.md"), "w") as handle:
        handle.write(table)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.render:  # the tables of an earlier run, e.g. after a change to how they are laid out
        with open(args.render) as handle:
            report = json.load(handle)
        _write(report, args.output_dir)
        return report
    if args.quick:
        settings = Settings(
            steps=4, batch_size=8, learning_rates=(3e-5,), seeds=(0,), validation_prompts=16, test_prompts=16
        )
    else:
        settings = Settings()
    if args.steps:
        settings.steps = args.steps
    if args.learning_rates:
        settings.learning_rates = tuple(args.learning_rates)
    if args.seeds:
        settings.seeds = tuple(args.seeds)
    if args.checkpoint:
        settings.checkpoint = args.checkpoint
    started = time.perf_counter()
    report = run_benchmark(settings, tuple(args.arms), args.workers)
    from trl_sgpo import SGPOConfig

    defaults = SGPOConfig(output_dir=tempfile.gettempdir(), use_cpu=True)
    report.update(
        command="python benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
        date=date.today().isoformat(),
        device=f"{platform.processor() or platform.machine()} CPU, {args.workers} worker(s), 1 thread each",
        settings=asdict(settings),
        arms=list(args.arms),
        regime=_regime(settings.checkpoint),
        sft_set_size=toy_checkpoint_metadata(settings.checkpoint)["sft_data"]["num_examples"],
        start=start_scores(settings),
        sgpo_default={
            name: getattr(defaults, name)
            for name in (
                "improver_format",
                "improver_warmup_steps",
                "improver_steps",
                "dpo_steps",
                "improver_target",
                "improver_drop_unchanged",
                "improver_loss_weight",
                "policy_sft_weight",
            )
        }
        | {"learning_rate": report["chosen_learning_rate"].get("sgpo"), "improver_template": TOY_IMPROVER_TEMPLATE},
        total_seconds=time.perf_counter() - started,
    )
    report["summary"] = summarize(report)
    _write(report, args.output_dir)
    return report


if __name__ == "__main__":
    main()
