"""The arms both quality benchmarks train, each from a `Job`: continued SFT's updates, SGPO with its pair
diagnostics, and the oracle (TRL's OnlineDPOTrainer ranking its samples with the task's checker, tied pairs
carrying no gradient); and the trainer settings every preference arm shares.

Each benchmark supplies what is its own: the start, the rows, how a batch is encoded for SFT, the checker
(``score(text, gold)``, the partial credit of ``text`` given a row's ``gold_column`` value), the trainers'
``max_length`` and ``logging_steps``, and a PEFT config where its arms train an adapter.
"""

import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.protocol.pairs import PairDiagnostics
from benchmarks.protocol.runs import Job


Score = Callable[[str, str], float]
LOGGED = (  # the trainer's logged statistics a report shows, averaged over the run's logs
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


def load_start(checkpoint: str):
    """The start's model and tokenizer, from its folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(checkpoint), AutoTokenizer.from_pretrained(checkpoint)


def trainer_settings(job: Job, output_dir: str, max_length: int, logging_steps: int) -> dict:
    """Trainer settings every preference arm shares: updates, prompts per update, beta, sampling. The sgpo/*
    statistics of the tables are read from the logs, every ``logging_steps`` updates."""
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
        max_length=max_length,
        report_to="none",
        save_strategy="no",
        logging_steps=logging_steps,
        disable_tqdm=True,
        seed=job.seed,
        data_seed=job.seed,
        use_cpu=True,
    )


def supervised_updates(model, optimizer, rows, job: Job, warmup_steps: int, encode: Callable[[dict], dict]) -> None:
    """Continued SFT: ``steps`` updates of ``batch_size`` rows in order, each the model's NLL of the batch
    ``encode`` makes (labels on the references), the learning rate warmed up linearly over ``warmup_steps``."""
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup_steps + 1)))
    model.train()
    for step in range(job.settings.steps):
        batch = rows[step * job.settings.batch_size : (step + 1) * job.settings.batch_size]
        loss = model(**encode(batch)).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


def mean_logs(history: list[dict]) -> dict[str, float]:
    values = {key: [log[key] for log in history if key in log] for key in LOGGED}
    return {key: statistics.fmean(v) for key, v in values.items() if v}


def run_sgpo(
    job: Job,
    model,
    tokenizer,
    rows,
    config: dict,
    *,
    max_length: int,
    logging_steps: int,
    gold_column: str,
    score: Score,
    skip_special_tokens: bool = False,
    peft_config=None,
):
    """SGPO with ``config`` over the shared settings; the trainer, and its logged statistics with, where the
    improver writes the chosen side, the pair diagnostics."""
    from trl_sgpo import SGPOConfig, SGPOTrainer

    with tempfile.TemporaryDirectory() as output_dir:
        settings = {**trainer_settings(job, output_dir, max_length, logging_steps), "overwrite_output_dir": True}
        trainer = SGPOTrainer(
            model=model,
            args=SGPOConfig(**{**settings, **config}),
            train_dataset=rows,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        diagnostics = None
        if config.get("pair_source", "sgpo") == "sgpo":
            diagnostics = PairDiagnostics(trainer, gold_column, score, skip_special_tokens=skip_special_tokens)
        trainer.train()
        logged = mean_logs(trainer.state.log_history)
    return trainer, {**logged, **(diagnostics.summary() if diagnostics else {})}


def checker_reward(gold_column: str, score: Score) -> Callable[..., list[float]]:
    """The oracle's reward for OnlineDPO: the checker's partial credit of each completion, given its row's
    ``gold_column`` (which TRL hands over by name, with the row's other columns)."""

    def reward(completions, **columns) -> list[float]:
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [score(text, gold) for text, gold in zip(texts, columns[gold_column])]

    return reward


def tie_dropping_online_dpo(dataset, gold_column: str, score: Score):
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


def run_oracle(
    job: Job,
    model,
    tokenizer,
    rows,
    *,
    max_length: int,
    logging_steps: int,
    gold_column: str,
    score: Score,
    peft_config=None,
):
    """The oracle arm: the trained model, and the share of its pairs whose two samples the checker tied."""
    from trl.experimental.online_dpo import OnlineDPOConfig

    trainer_class = tie_dropping_online_dpo(rows, gold_column, score)
    with tempfile.TemporaryDirectory() as output_dir:
        config = OnlineDPOConfig(
            **trainer_settings(job, output_dir, max_length, logging_steps), bf16=False, gradient_checkpointing=False
        )
        trainer = trainer_class(
            model=model,
            reward_funcs=checker_reward(gold_column, score),
            args=config,
            train_dataset=rows,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        trainer.train()
    return trainer.model, {"tied_pairs": trainer.ties / max(trainer.pairs, 1)}


def train_arm(
    job: Job,
    arm_table: dict[str, tuple[str, dict | None]],
    train_rows: Callable[[Job], Any],
    run_sft: Callable[[Job, Any, Any, Any], tuple[Any, dict[str, float]]],
    run_sgpo_arm: Callable[[Job, Any, Any, Any, dict], tuple[Any, dict[str, float]]],
    oracle_settings: Callable[[Job], dict],
) -> tuple[Any, Any, dict[str, float], float]:
    """Train ``job.arm`` from the start on this seed's rows, on one CPU thread, as its method: continued SFT, the
    oracle, or SGPO with the arm's overrides (``run_sft(job, model, tokenizer, rows)``,
    ``run_sgpo_arm(..., overrides)``, each returning the trained model and its diagnostics). The trained model, the
    tokenizer, the arm's diagnostics and the seconds it took."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    model, tokenizer = load_start(job.settings.checkpoint)
    rows = train_rows(job)
    method, overrides = arm_table[job.arm]  # an arm trains as its method does (a variant of SFT is SFT)
    if method == "sft":
        model, diagnostics = run_sft(job, model, tokenizer, rows)
    elif method == "online_dpo_oracle":
        model, diagnostics = run_oracle(job, model, tokenizer, rows, **oracle_settings(job))
    else:
        model, diagnostics = run_sgpo_arm(job, model, tokenizer, rows, overrides)
    return model, tokenizer, diagnostics, time.perf_counter() - started
