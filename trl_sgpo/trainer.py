"""`SGPOTrainer`: TRL's `OnlineDPOTrainer` with SGPO's self-generated pairs and the improver role.

The trainer is Trainer glue: it builds a step's stages (`trl_sgpo.step`) from the tokenizer, the settings and the
accelerator, hands each what it needs (never itself), and runs one step through them in `training_step`:
draft -> chosen side (the improver's rewrite, for ``sgpo``) -> scores -> losses -> statistics -> backward, leaving a
`StepRecord` that the sample tables, the health signal and the benchmarks read (`step_listeners`).
"""

import functools
import os
import textwrap
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from accelerate.utils import DistributedType
from datasets import Dataset, IterableDataset
from torch import nn
from transformers import (
    DataCollator,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, EvalPrediction
from transformers.utils import logging
from trl.experimental.online_dpo import OnlineDPOTrainer
from trl.extras.profiling import profiling_context
from trl.trainer.callbacks import SyncRefModelCallback

from .config import SGPOConfig
from .data.formats import prepare_training_data
from .method.improver import end_of_turn_token
from .method.pairs import filter_pairs, gate_pairs, uses_improver
from .method.schedule import DPO, IMPROVER, PHASE_IDS
from .method.step_stats import RewriteHealth, StepStats, completion_stats, nan_mean, pair_stats, reduce_stats
from .preflight import check_trainer_arguments
from .records import DraftBatch, Padded, StageClock, StepRecord
from .run.deepspeed_models import models_for_deepspeed
from .run.evaluation import EvaluationMixin, load_eval_metric
from .run.initial_drafts import InitialDrafts
from .run.output_dir import check_output_dir
from .run.phases import SGPOPhaseCallback
from .run.readiness import ImproverReadiness, set_aside_readiness_rows
from .run.sample_table import SGPOSampleTableCallback
from .run.saving import SavingMixin
from .run.summary import RunSummary
from .step.drafts import DraftStage
from .step.layout import PromptLayout
from .step.losses import DPOLoss, ImproverLoss
from .step.pair_gates import PairGate
from .step.pair_sources import pair_source
from .step.rewrite import Rewriter
from .step.sampling import Sampler
from .step.scoring import Scorer
from .step.vllm_engine import VLLMRoles, build_vllm_generation


logger = logging.get_logger(__name__)


def _no_reward(*args, **kwargs):
    """Placeholder handed to the parent, which insists on a reward function; SGPO never calls it."""
    raise RuntimeError("SGPO has no reward function; this placeholder must never be called.")


class SGPOTrainer(EvaluationMixin, SavingMixin, OnlineDPOTrainer):
    r"""
    Trainer for SGPO: Self-Generated Preference Optimization based on Self-Improver
    ([arXiv:2507.20181](https://arxiv.org/abs/2507.20181)).

    One model plays two roles. As the *policy* it answers a prompt `x` with `y`; as the *improver*, prompted with
    `args.improver_template` holding `x` and `y`, it rewrites `y` into `y'`. Each optimizer step is one of two phases,
    decided by [`SGPOPhaseCallback`] from the schedule in `args`:

    - **improver step**: sample `y` from the policy, build the improver's target from the SFT reference
      (`args.improver_target`), filter the targets, and take a supervised step on `(improver prompt(x, y), target)`;
    - **DPO step**: sample `y`, let the improver rewrite it into `y'`, drop degenerate pairs, and take a DPO step
      on `(chosen=y', rejected=y)` against the reference model (the adapter-disabled model under PEFT), plus the
      improver loss weighted by `args.improver_loss_weight`.

    No reward model, judge or preference data is used. The dataset is TRL's prompt-completion format (standard or
    conversational); the completion is the SFT reference. Generation goes through the parent's machinery
    (`transformers` generate under `unwrap_model_for_generation`, or vLLM with `use_vllm=True`).

    Losses are sums over the micro-batch divided by the number of prompts in the whole accumulated batch, so that
    gradient accumulation and data parallelism give the same gradient as one big batch; a dropped pair or target
    contributes zero.

    Args:
        model (`str | PreTrainedModel`): the model to train, or a path / Hub id loaded with `AutoModelForCausalLM`.
        ref_model (`PreTrainedModel`, *optional*): the DPO reference model. Default: a frozen copy of `model`
            (none under PEFT: the adapter is disabled instead).
        args ([`SGPOConfig`], *optional*): the configuration.
        data_collator (`DataCollator`, *optional*): defaults to the parent's collator (lists of prompts pass through).
        train_dataset (`Dataset | IterableDataset`): prompt-completion rows; the completion is the SFT reference.
        eval_dataset (`Dataset | dict[str, Dataset]`, *optional*): evaluated by the policy's NLL of the references.
        processing_class (`PreTrainedTokenizerBase`, *optional*): the tokenizer; loaded from `model` if it is a path.
        peft_config (`peft.PeftConfig`, *optional*): train an adapter instead of the full model.
        compute_metrics, callbacks, optimizers, preprocess_logits_for_metrics: as in `transformers.Trainer`.
        reward_funcs: not accepted (SGPO has no reward); present only to fail clearly when passed.
        eval_metric (`evaluate.EvaluationModule | Callable | str`, *optional*): scored at each evaluation on greedy
            generations for the eval prompts: `metric.compute(predictions=[...], references=[...])` (or the callable
            with the same keywords) must return a dict of numbers, logged as `eval_<name>`. Defaults to
            `args.eval_metric`, loaded with `evaluate.load`.
    """

    _tag_names = ["trl", "sgpo"]
    # With improver_format="next_turn", generate the rewrite on the drafts' KV cache (False: re-encode the whole
    # conversation; the rewrites are the same, see tests/test_next_turn.py).
    reuse_draft_cache = True
    # Score every continuation of a prompt in one packed row, the prompt encoded once (False: separate passes; the
    # log-probabilities are the same, see tests/test_packing.py). Only where `Scorer.packable` says it is exact.
    pack_shared_prefix = True
    # Run the LM head and the log-softmax only at the positions whose log-probabilities are used (False: at every
    # position from the first scored one on; the log-probabilities are the same, see tests/test_selective_logits.py).
    # Applies only where `Scorer.selects_logits` says the model supports it.
    select_logits = True
    # Synchronize the device around each timed stage of a step (`StepRecord.seconds`), so that on a GPU the seconds
    # are the device's (the speed benchmark turns it on). Off: no synchronization is added to a step.
    synchronize_stage_clock = False
    _name = "SGPO"
    _paper = {
        "title": "SGPO: Self-Generated Preference Optimization based on Self-Improver",
        "id": "2507.20181",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{lee2025sgpo,
                title   = {SGPO: Self-Generated Preference Optimization based on Self-Improver},
                author  = {Lee, Hyeonji and Jo, Daejin and Yun, Seohwan and Kim, Sungwoong},
                journal = {arXiv preprint arXiv:2507.20181},
                year    = {2025}
            }"""),
    }

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | str,
        ref_model: PreTrainedModel | nn.Module | None = None,
        args: SGPOConfig | None = None,
        data_collator: DataCollator | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | IterableDataset | dict[str, Dataset | IterableDataset] | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        peft_config: Any | None = None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
        preprocess_logits_for_metrics: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        reward_funcs: Any = None,
        eval_metric: Any = None,
    ) -> None:
        args, processing_class = check_trainer_arguments(
            model, args, train_dataset, processing_class, peft_config, reward_funcs
        )
        # Reject bad data before the model is loaded or anything is generated ('auto' is resolved in a copy of args).
        args, train_dataset, eval_dataset = prepare_training_data(args, processing_class, train_dataset, eval_dataset)
        train_dataset, readiness_rows = set_aside_readiness_rows(args, train_dataset)

        callbacks = list(callbacks or [])
        if not any(isinstance(callback, SGPOPhaseCallback) for callback in callbacks):
            callbacks.append(SGPOPhaseCallback.from_args(args))

        # The parent insists on a reward function; hand it a placeholder and forget it afterwards. Its vLLM engine
        # is an older hand-rolled one, so it is built with use_vllm off (the same args object: the parent and
        # transformers' Trainer write into it, e.g. the DeepSpeed config), and `VLLMRoles` builds TRL's
        # `VLLMGeneration` below.
        # Under DeepSpeed the models are built here where the parent cannot (`deepspeed_models`); a path loaded here
        # takes model_init_kwargs with it, which the parent refuses beside a model object.
        model, ref_model, loaded = models_for_deepspeed(model, ref_model, args, peft_config)
        init_kwargs = args.model_init_kwargs
        use_vllm, args.use_vllm = args.use_vllm, False
        if loaded:
            args.model_init_kwargs = None
        try:
            super().__init__(
                model=model,
                ref_model=ref_model,
                reward_funcs=_no_reward,
                args=args,
                data_collator=data_collator,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                peft_config=peft_config,
                compute_metrics=compute_metrics,
                callbacks=callbacks,
                optimizers=optimizers,
                preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            )
        finally:
            args.use_vllm, args.model_init_kwargs = use_vllm, init_kwargs
        self.use_vllm, self.vllm_mode = use_vllm, args.vllm_mode if use_vllm else None
        self.reward_funcs = None
        self.reward_func_names = []
        self.reward_processing_classes = []
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._ref_synced_at_step: int | None = None
        self.eval_metric = load_eval_metric(eval_metric if eval_metric is not None else args.eval_metric)
        self.dataset_name: str | None = None  # shown in the model card; set it to the Hub id of the training data
        self._build_stages(args, readiness_rows)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """Train; refuses a non-empty `output_dir` unless resuming or `overwrite_output_dir=True`."""
        if self.is_world_process_zero():
            check_output_dir(self.args.output_dir, resume_from_checkpoint, self.args.overwrite_output_dir)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # ------------------------------------------------------------------ set-up

    def _build_stages(self, args: SGPOConfig, readiness_rows: dict[str, list] | None) -> None:
        """A step's stages, each handed what it needs; the run's callbacks that read them."""
        end_of_turn = self._stop_at_end_of_turn()
        device = self.accelerator.device
        pad_token_id = self._tokenizer.pad_token_id
        profile = functools.partial(profiling_context, self)
        # Both roles' vLLM sampling on TRL's VLLMGeneration (after the end-of-turn token joined the stop ids).
        self.vllm_roles = None
        if args.use_vllm:
            generation = build_vllm_generation(
                args, self.model, self.accelerator, self.processing_class, self.eos_token_ids
            )
            current_step = lambda: self.state.global_step  # noqa: E731
            self.vllm_roles = VLLMRoles(generation, args, self.eos_token_ids, current_step, profile)
        # The seam for sampling: any callable with `Sampler.__call__`'s signature may replace it (tests do); the
        # stages call it through `_sample`, so a replacement takes effect at once.
        self.sampler: Callable[..., Any] = Sampler(
            args,
            self.generation_kwargs,
            self.eos_token_ids,
            pad_token_id,
            self.accelerator,
            profile,
            wrapped_model=lambda: self.model_wrapped,
            is_fsdp_enabled=self.is_fsdp_enabled,
            vllm_roles=self.vllm_roles,
        )
        # prompts of both roles as token ids; completions padded for scoring, ended ones with the end-of-turn token
        self.layout = PromptLayout(
            self.processing_class,
            args.improver_format,
            args.improver_template,
            args.improver_instruction,
            end_of_turn,
            pad_token_id,
            device,
        )
        self.scorer = Scorer(  # the forward passes: separate, packed, selective logits
            self.max_length,
            pad_token_id,
            device,
            self.accelerator.unwrap_model,
            args.policy_sft_weight,
            select_logits=self.select_logits,
            pack_shared_prefix=self.pack_shared_prefix,
        )
        self.draft = DraftStage(self.layout, self._sample)
        self.rewrite = Rewriter(self.layout, self._sample, speculate=args.improver_speculative_tokens > 0)
        self.choose = pair_source(args.pair_source, self.rewrite, args.improver_alpha, self._sample)
        self.gate = PairGate(args.pair_gate, args.pair_gate_margin, self.scorer, self.rewrite, self._reference_logps)
        self.improver_loss = ImproverLoss(self.scorer, self.layout, args, self._reference_logps)
        self.dpo_loss = DPOLoss(
            self.scorer, self._reference_logps, lambda: self.beta, args.loss_type, args.chosen_nll_weight
        )
        # What reads each step's record: the health signal (warns once if rewrites rarely beat their drafts), and
        # every callback with an `on_step_record` method (the sample tables).
        self.rewrite_health = RewriteHealth()
        self.step_listeners: list[Callable[[StepRecord], None]] = [self.rewrite_health.on_step_record]
        if args.log_completions:
            self.add_callback(SGPOSampleTableCallback(self.processing_class, num_rows=args.num_completions_to_print))
        # Step 1's drafts sampled once from the initial policy (the paper's Figure 1), or None: fresh every step.
        self.initial_drafts = None
        if args.improver_warmup_drafts == "initial":
            self.initial_drafts = InitialDrafts(
                self.draft,
                self.train_dataset,
                args,
                self.accelerator.process_index,
                self.accelerator.num_processes,
                current_step=lambda: self.state.global_step,
                warmup_cap=lambda: self.phase_callback.warmup_cap,
            )
        readiness = None
        if readiness_rows is not None:  # Step 1 ends when the improver is ready (`improver_ready_at`)
            readiness = ImproverReadiness(
                readiness_rows,
                self.draft,
                self.rewrite,
                self.processing_class,
                self._reference_logps,
                model=lambda: self.model_wrapped,
                phases=lambda: self.phase_callback,
                report=lambda name, value: self._metrics[name].append(value),
            )
            self.add_callback(readiness)
        # What the run did, said when training ends (and shown in the model card).
        self.run_summary = RunSummary(
            reduce=lambda values: self.accelerator.reduce(values.to(self.accelerator.device), reduction="sum"),
            readiness=readiness.last if readiness is not None else None,
        )
        self.add_callback(self.run_summary)

    def _sample(self, *args: Any, **kwargs: Any) -> Any:
        """The sampler seam as the stages call it: whatever `sampler` is now."""
        return self.sampler(*args, **kwargs)

    def _reference_logps(self, batch: DraftBatch, pair: Padded) -> torch.Tensor:
        """The DPO reference model's per-token log-probabilities of ``pair`` (no gradients)."""
        if self.ref_model is not None:
            return self.scorer.pair_logps(self.ref_model, batch.prompt_ids, batch.prompt_mask, pair)
        with self.model.disable_adapter():  # PEFT: the reference is the base model with the adapter disabled
            return self.scorer.pair_logps(self.model, batch.prompt_ids, batch.prompt_mask, pair)

    def _stop_at_end_of_turn(self) -> int:
        """The chat template's end-of-turn token (`improver.end_of_turn_token`); generation stops on it too."""
        conversational = isinstance(next(iter(self.train_dataset))["prompt"], list)
        end_of_turn = end_of_turn_token(self.processing_class, conversational)
        if end_of_turn not in self.eos_token_ids:
            # e.g. a base tokenizer carrying ChatML: eos_token <|endoftext|>, turns ending with <|im_end|>
            self.eos_token_ids = [*self.eos_token_ids, end_of_turn]
            logger.warning(
                "The chat template ends assistant turns with %r, which is not among the end-of-sequence ids %s: "
                "generation now stops on it too, and finished responses are scored ending with it.",
                self.processing_class.convert_ids_to_tokens(end_of_turn),
                self.eos_token_ids[:-1],
            )
        return end_of_turn

    @property
    def phase_callback(self) -> SGPOPhaseCallback:
        # Looked up each time: `restore_callback_states_from_checkpoint` replaces callback instances on resume.
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, SGPOPhaseCallback):
                return callback
        raise RuntimeError("SGPOPhaseCallback was removed from the trainer; SGPO needs it to choose each phase.")

    @property
    def beta(self) -> float:
        # Upstream indexes a list-valued beta by the float epoch and crashes at the second step.
        if isinstance(self._beta, list):
            epoch = int(self.state.epoch or 0)
            return self._beta[min(epoch, len(self._beta) - 1)]
        return self._beta

    # ------------------------------------------------------------- step

    def training_step(
        self, model: nn.Module, inputs: dict[str, torch.Tensor | Any], num_items_in_batch: int | None = None
    ) -> torch.Tensor:
        """One optimizer micro-step of the current phase (`_dpo_step` or `_improver_step`) on fresh policy samples.

        Losses are sums over the micro-batch scaled by ``1 / prompts in the accumulated batch``: exact under gradient
        accumulation and data parallelism. The step's `StepRecord` goes to `step_listeners` and to every callback
        with an `on_step_record` method.
        """
        model.train()
        phase = self.phase_callback.phase
        if phase == DPO and self.args.sync_ref_model_each_dpo_phase and self.phase_callback.phase_started:
            self._sync_ref_model()
        self._set_phase_learning_rate(phase)
        stats = StepStats()
        synchronize = self.synchronize_stage_clock and self.accelerator.device.type == "cuda"
        clock = StageClock(torch.cuda.synchronize if synchronize else None)
        self.scorer.clock = clock
        batch = self._step_drafts(model, inputs, phase, clock)
        stats.update(completion_stats("draft", batch.drafts))
        scale = 1.0 / (len(batch.prompts) * self.current_gradient_accumulation_steps)
        record = StepRecord(self.state.global_step, phase, batch.rows, batch.drafts, batch.reference_texts)
        step = self._dpo_step if phase == DPO else self._improver_step
        loss = step(model, batch, scale, stats, clock, record)

        step_values = reduce_stats(stats, self.accelerator)
        for name, value in step_values.items():
            self._metrics[name].append(value)
        self._metrics["sgpo/phase"].append(float(PHASE_IDS[phase]))
        self._stop_if_not_finite(loss, phase)
        kwargs = {}
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            kwargs["scale_wrt_gas"] = False  # the loss is already divided by the accumulation steps
        with clock.stage("backward"):
            self.accelerator.backward(loss, **kwargs)
        self.scorer.clock = None
        record.loss, record.stats, record.seconds, record.work = loss.item(), step_values, clock.seconds, clock.work
        self._publish(record)
        return loss.detach()

    def _publish(self, record: StepRecord) -> None:
        """Hand a step's record to its readers: `step_listeners`, then the callbacks with `on_step_record`."""
        for listener in self.step_listeners:
            listener(record)
        for callback in self.callback_handler.callbacks:
            if hasattr(callback, "on_step_record"):
                callback.on_step_record(record)

    def _step_drafts(self, model: nn.Module, inputs: dict[str, Any], phase: str, clock: StageClock) -> DraftBatch:
        """The step's drafts: the policy's fresh samples, or in Step 1 with ``improver_warmup_drafts='initial'`` the
        next micro-batch of the initial policy's (`InitialDrafts`), whose rows replace the data loader's."""
        if self.initial_drafts is not None:
            if phase == IMPROVER and self.state.global_step < int(self.phase_callback.schedule.improver_warmup_steps):
                return self.initial_drafts.next_batch(model)
            self.initial_drafts = None  # Step 1 is over: free the pool
        return self.draft(model, inputs, keep_cache=phase == DPO and self._continues_drafts(), clock=clock)

    def _continues_drafts(self) -> bool:
        """Whether the improver's rewrite is generated on the drafts' KV cache (next-turn format, transformers)."""
        return (
            self.reuse_draft_cache
            and self.args.improver_format == "next_turn"
            and uses_improver(self.args.pair_source)
            and not self.use_vllm
        )

    def _dpo_step(
        self,
        model: nn.Module,
        batch: DraftBatch,
        scale: float,
        stats: StepStats,
        clock: StageClock,
        record: StepRecord,
    ) -> torch.Tensor:
        """Chosen = the pair source's side (the improver's rewrite with ``sgpo``, the reference with ``spin``, the
        mechanical edit with ``edit``, the greedy answer with ``self_sharpen``), rejected = the draft; degenerate
        pairs dropped, then those the pair gate refuses; the DPO loss, plus the improver objective weighted by
        ``improver_loss_weight`` where the improver wrote the rewrites."""
        args = self.args
        side = self.choose(model, batch, clock)
        chosen = side.completions
        pair = self.layout.pad(chosen + batch.drafts)
        loss = torch.zeros((), device=self.accelerator.device)
        scores = None
        if side.rewrites is not None:
            if side.rewrites.speculation is not None:
                stats.add("sgpo/rewrite_tokens_from_draft", [side.rewrites.speculation.accepted_share])
            stats.update(completion_stats("improver", chosen))
            record.rewrites = chosen
            if args.improver_loss_weight > 0:
                # Next turn: the improver's pass over (x, y, instruction, target) also scores the draft y, and,
                # packed, the rewrite y' too; the DPO loss takes them from these scores.
                terms = self.improver_loss(model, batch, side.rewrites.prompts, scale, stats, pair)
                loss = loss + args.improver_loss_weight * terms.loss
                scores, record.targets, record.target_kept = terms.scores, terms.targets, terms.keep
        prompts = side.rewrites.prompts if side.rewrites is not None else None
        passes, ref_logps = self.gate(model, batch, prompts, chosen, pair)
        pairs = gate_pairs(filter_pairs(chosen, batch.drafts), passes)
        pair_stats(stats, chosen, batch.drafts, batch.references, pairs)
        loss = loss + self.dpo_loss(model, batch, pair, pairs.keep, scale, stats, scores, ref_logps)
        record.chosen, record.pair_verdicts = chosen, [reason or "kept" for reason in pairs.reasons]
        return loss

    def _improver_step(
        self,
        model: nn.Module,
        batch: DraftBatch,
        scale: float,
        stats: StepStats,
        clock: StageClock,
        record: StepRecord,
    ) -> torch.Tensor:
        """The improver objective alone (Step 1 and the improver refreshes)."""
        prompts = self.layout.improver_prompts(batch)
        terms = self.improver_loss(model, batch, prompts, scale, stats)
        record.targets, record.target_kept = terms.targets, terms.keep
        return terms.loss

    # ------------------------------------------------------- around the step

    def _set_phase_learning_rate(self, phase: str) -> None:
        """Improver steps use ``improver_learning_rate``, scaled by the same schedule as ``learning_rate``.

        The scheduler writes ``learning_rate x factor`` into the optimizer after every step; this runs before the
        step's update, so an improver step rescales it and the next DPO step finds the scheduler's value again.
        """
        if self.args.improver_learning_rate is None or self.optimizer is None or self.lr_scheduler is None:
            return
        ratio = self.args.improver_learning_rate / self.args.learning_rate if phase == IMPROVER else 1.0
        for group, scheduled in zip(self.optimizer.param_groups, self.lr_scheduler.get_last_lr()):
            group["lr"] = scheduled * ratio

    def _stop_if_not_finite(self, loss: torch.Tensor, phase: str) -> None:
        """Stop before a NaN/inf loss reaches the weights: save the last good state, then raise."""
        finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
        if self.accelerator.num_processes > 1:  # every process must stop together
            finite = self.accelerator.reduce(finite, reduction="sum")
        if finite.item() == self.accelerator.num_processes:
            return
        self.model.zero_grad(set_to_none=True)  # drop this step's partial gradients
        self._save_checkpoint(self.model_wrapped, trial=None)
        folder = os.path.join(self.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        raise FloatingPointError(
            f"Non-finite loss ({loss.item()}) in a {phase} step at global step {self.state.global_step}: training "
            f"stopped before the update. The last good weights, optimizer and schedule are saved in {folder}. Lower "
            "learning_rate or beta, check the data, or train in float32, then resume with "
            "`resume_from_checkpoint`."
        )

    def _sync_ref_model(self) -> None:
        if self.ref_model is None or self._ref_synced_at_step == self.state.global_step:
            return
        model = self.accelerator.unwrap_model(self.model)
        SyncRefModelCallback.sync_target_model(model, self.accelerator.unwrap_model(self.ref_model), alpha=1.0)
        self._ref_synced_at_step = self.state.global_step

    def _maybe_log_save_evaluate(self, *args, **kwargs):
        # The parent averages every list in `self.stats` and divides by zero on an empty one; a logging window may
        # hold only one phase, so hand it just the statistics that were recorded in this window.
        # Each list is averaged here, NaN steps left out (a window with one no-pair step keeps the others' mean);
        # NaN only where no step of the window had a value.
        if self.control.should_log and self.state.global_step > self._globalstep_last_logged:
            self.stats = {name: [nan_mean(values)] for name, values in self._metrics.items() if values}
            self._metrics = defaultdict(list)
        return super()._maybe_log_save_evaluate(*args, **kwargs)
