"""`SGPOTrainer`: TRL's `OnlineDPOTrainer` with SGPO's self-generated pairs and the improver role."""

import math
import os
import textwrap
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import DistributedType, gather_object
from datasets import Dataset, IterableDataset
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import (
    AutoTokenizer,
    DataCollator,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, EvalPrediction
from transformers.utils import logging
from trl.experimental.online_dpo import OnlineDPOTrainer
from trl.trainer.callbacks import SyncRefModelCallback

from .callbacks import SGPOPhaseCallback, SGPOSampleTableCallback
from .config import SGPOConfig
from .data import prepare_training_data, reference_text
from .improver import (
    edit_distance,
    improver_target,
    select_targets,
)
from .losses import preference_loss
from .model_card import config_section, describe_sources, is_hub_dataset
from .output_dir import check_output_dir
from .pairs import DROP_REASONS, Completion, PairFilterResult, filter_pairs, uses_improver
from .prompt_layout import ImproverPrompts, PromptLayout
from .sampling import DraftCache, Sampler
from .schedule import DPO, IMPROVER, PHASE_IDS
from .scoring import Scorer, Scores


REF_MODEL_FILE = "sgpo_ref_model.safetensors"
# The health warning: judged over the first DPO steps, raised once when fewer rewrites than this beat their draft.
REWRITE_HEALTH_WINDOW = 5
REWRITE_CLOSER_WARNING_BELOW = 0.2

logger = logging.get_logger(__name__)


def _nan_mean(values: list[float]) -> float:
    valid = [value for value in values if not math.isnan(value)]
    return sum(valid) / len(valid) if valid else math.nan


def _last_turns(prompt: str | list[dict], turns: int = 3) -> str:
    """A prompt as a sample table shows it: the text, or its last ``turns`` messages as ``role: content``."""
    if isinstance(prompt, str):
        return prompt
    shown = "\n".join(f"{message['role']}: {message['content']}" for message in prompt[-turns:])
    hidden = len(prompt) - turns
    return f"({hidden} earlier message{'s' if hidden > 1 else ''})\n{shown}" if hidden > 0 else shown


def _no_reward(*args, **kwargs):
    """Placeholder handed to the parent, which insists on a reward function; SGPO never calls it."""
    raise RuntimeError("SGPO has no reward function; this placeholder must never be called.")


class SGPOTrainer(OnlineDPOTrainer):
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
        if reward_funcs is not None:
            raise ValueError(
                "SGPOTrainer takes no `reward_funcs`: SGPO builds its pairs without any reward (chosen = the "
                "improver's rewrite). Remove the argument, or use TRL's OnlineDPOTrainer for reward-ranked pairs."
            )
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "")
            # a model built in Python has no name or path: name the folder after its class
            name = os.path.basename(os.path.normpath(name)) if name else type(model).__name__
            args = SGPOConfig(output_dir=f"{name}-SGPO")
        elif not isinstance(args, SGPOConfig):
            raise TypeError(
                f"`args` must be an SGPOConfig, got {type(args).__name__}. Build one with SGPOConfig(...)."
            )
        if train_dataset is None:
            raise ValueError("`train_dataset` is required: prompt-completion rows whose completion is the reference.")
        if (
            isinstance(model, str)
            and model.startswith((".", "/", "~"))
            and not os.path.isdir(os.path.expanduser(model))
        ):
            raise FileNotFoundError(
                f"Model path {model!r} does not exist. Pass a directory written by `save_pretrained`, a Hub model id "
                "(like 'Qwen/Qwen2.5-0.5B-Instruct'), or a model object."
            )
        if processing_class is None:
            if not isinstance(model, str):
                raise ValueError("`processing_class` (the tokenizer) is required when `model` is a model object.")
            processing_class = AutoTokenizer.from_pretrained(model, trust_remote_code=args.trust_remote_code)
        if processing_class.eos_token is None:
            raise ValueError(
                "The tokenizer has no EOS token: SGPO needs one to tell finished responses from cut ones. Set "
                "`tokenizer.eos_token` (for chat models, the end-of-turn token)."
            )
        if peft_config is not None and args.sync_ref_model_each_dpo_phase:
            raise ValueError(
                "sync_ref_model_each_dpo_phase is not supported with PEFT: the reference model is the base model "
                "with the adapter disabled. Set sync_ref_model_each_dpo_phase=False or train without PEFT."
            )
        # Reject bad data before the model is loaded or anything is generated.
        train_dataset, eval_dataset = prepare_training_data(args, processing_class, train_dataset, eval_dataset)

        callbacks = list(callbacks or [])
        if not any(isinstance(callback, SGPOPhaseCallback) for callback in callbacks):
            callbacks.append(SGPOPhaseCallback.from_args(args))

        # The parent insists on a reward function; hand it a placeholder and forget it afterwards.
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
        self.reward_funcs = None
        self.reward_func_names = []
        self.reward_processing_classes = []
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._ref_synced_at_step: int | None = None
        self._rewrite_closer_history: list[float] = []
        self._rewrite_health_checked = False
        self.eval_metric = self._load_eval_metric(eval_metric if eval_metric is not None else args.eval_metric)
        self.dataset_name: str | None = None  # shown in the model card; set it to the Hub id of the training data
        # Rows of (prompt, draft, rewrite or target, kept?) kept from each step, for `SGPOSampleTableCallback`.
        self.num_sample_rows = 0
        self.last_samples: list[dict[str, str]] = []
        # The seam for sampling: any callable with `Sampler.__call__`'s signature may replace it (tests do).
        self.sampler: Callable[..., list[Completion]] = Sampler(self)
        self.scorer = Scorer(self)  # the forward passes: separate, packed, selective logits
        self.layout = PromptLayout(self)  # prompts of both roles as token ids; completions padded for scoring
        if args.log_completions:
            self.add_callback(SGPOSampleTableCallback(self, num_rows=args.num_completions_to_print))

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """Train; refuses a non-empty `output_dir` unless resuming or `overwrite_output_dir=True`."""
        if self.is_world_process_zero():
            check_output_dir(self.args.output_dir, resume_from_checkpoint, self.args.overwrite_output_dir)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # ------------------------------------------------------------------ set-up

    @staticmethod
    def _load_eval_metric(metric: Any) -> Any:
        if isinstance(metric, str):
            import evaluate

            return evaluate.load(metric)
        return metric

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
        accumulation and data parallelism.
        """
        model.train()
        phase = self.phase_callback.phase
        if phase == DPO and self.args.sync_ref_model_each_dpo_phase and self.phase_callback.phase_started:
            self._sync_ref_model()
        self._set_phase_learning_rate(phase)
        stats = _StepStats()
        batch = self._sample_drafts(model, inputs, stats, keep_cache=phase == DPO and self._continues_drafts())
        scale = 1.0 / (len(batch.prompts) * self.current_gradient_accumulation_steps)
        step = self._dpo_step if phase == DPO else self._improver_step
        loss, shown, verdicts = step(model, batch, scale, stats)
        if self.num_sample_rows and self.accelerator.is_main_process:
            self._keep_samples(phase, batch.prompts, batch.drafts, shown, verdicts, batch.reference_texts)

        self._record(stats, phase)
        if phase == DPO and uses_improver(self.args.pair_source):
            self._check_rewrite_health()
        self._stop_if_not_finite(loss, phase)
        kwargs = {}
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            kwargs["scale_wrt_gas"] = False  # the loss is already divided by the accumulation steps
        self.accelerator.backward(loss, **kwargs)
        return loss.detach()

    def _continues_drafts(self) -> bool:
        """Whether the improver's rewrite is generated on the drafts' KV cache (next-turn format, transformers)."""
        return (
            self.reuse_draft_cache
            and self.args.improver_format == "next_turn"
            and uses_improver(self.args.pair_source)
            and not self.use_vllm
        )

    def _sample_drafts(
        self, model: nn.Module, inputs: dict[str, Any], stats: "_StepStats", keep_cache: bool = False
    ) -> "_Batch":
        """What both phases start from: the policy's drafts for the prompts, and the tokenized references.

        ``keep_cache``: keep the drafts' KV cache in the batch, for the improver's next turn to continue from.
        """
        prompts = inputs["prompt"]
        policy_texts = self.layout.policy_prompt_texts(prompts)
        prompt_ids, prompt_mask = self.layout.tokenize_prompts(policy_texts)
        draft_cache = DraftCache() if keep_cache else None
        drafts = self.sampler(model, policy_texts, prompt_ids, prompt_mask, "policy", cache=draft_cache)
        reference_texts = [reference_text(completion) for completion in inputs["completion"]]
        stats.add("sgpo/response_length", [len(d.token_ids) for d in drafts])
        stats.add("sgpo/eos_rate", [float(d.ended) for d in drafts])
        stats.add("val/contain_eos_token", [float(d.ended) for d in drafts])
        return _Batch(
            prompts=prompts,
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            drafts=drafts,
            reference_texts=reference_texts,
            references=[self.layout.reference_completion(text) for text in reference_texts],
            draft_cache=draft_cache if draft_cache is not None and draft_cache.cache is not None else None,
        )

    def _dpo_step(
        self, model: nn.Module, batch: "_Batch", scale: float, stats: "_StepStats"
    ) -> tuple[torch.Tensor, list[Completion], list[str]]:
        """Chosen = the improver's rewrite of each draft (the reference with ``spin``, the mechanical edit with
        ``edit``), rejected = the draft; degenerate pairs dropped; the DPO loss, plus the improver objective weighted
        by ``improver_loss_weight``."""
        loss = torch.zeros((), device=self.accelerator.device)
        scores = None
        if uses_improver(self.args.pair_source):
            prompts = self.layout.improver_prompts(batch)
            if batch.draft_cache is not None:  # next turn: continue from the drafts' cache
                ids, mask = prompts.generation_ids, prompts.generation_mask
                chosen = self.sampler(model, prompts.texts, ids, mask, "improver", cache=batch.draft_cache)
            else:
                chosen = self.sampler(model, prompts.texts, prompts.ids, prompts.mask, "improver", cache=None)
            batch.draft_cache = None
            stats.add("sgpo/improved_length", [len(c.token_ids) for c in chosen])
            stats.add("sgpo/improver_eos_rate", [float(c.ended) for c in chosen])
            if self.args.improver_loss_weight > 0:
                # Next turn: the improver's pass over (x, y, instruction, target) also scores the draft y, and,
                # packed, the rewrite y' too (`Scorer.packed_scores`).
                fused = prompts.rejected_lengths is not None
                improver_loss, _, _, scores = self._improver_objective(
                    model, batch, prompts, scale, stats, score_rejected=fused, chosen=chosen if fused else None
                )
                loss = loss + self.args.improver_loss_weight * improver_loss
        elif self.args.pair_source == "edit":
            chosen = [self._edit_toward(draft, reference) for draft, reference in zip(batch.drafts, batch.references)]
        else:  # spin
            chosen = batch.references
        pairs = filter_pairs(chosen, batch.drafts)
        self._add_pair_stats(stats, chosen, batch.drafts, batch.references, pairs)
        loss = loss + self._dpo_loss(
            model, batch.prompt_ids, batch.prompt_mask, chosen, batch.drafts, pairs.keep, scale, stats, scores
        )
        return loss, chosen, [reason or "kept" for reason in pairs.reasons]

    def _improver_step(
        self, model: nn.Module, batch: "_Batch", scale: float, stats: "_StepStats"
    ) -> tuple[torch.Tensor, list[Completion], list[str]]:
        """The improver objective alone (Step 1 and the improver refreshes)."""
        loss, targets, keep, _ = self._improver_objective(
            model, batch, self.layout.improver_prompts(batch), scale, stats
        )
        return loss, targets, ["kept" if kept else "filtered" for kept in keep]

    def _improver_objective(
        self,
        model: nn.Module,
        batch: "_Batch",
        prompts: "ImproverPrompts",
        scale: float,
        stats: "_StepStats",
        score_rejected: bool = False,
        chosen: list[Completion] | None = None,
    ) -> tuple[torch.Tensor, list[Completion], list[bool], "Scores | None"]:
        """The improver's NLL of targets built from the references, plus ``policy_sft_weight`` times the policy's SFT
        loss on the references (which keeps the policy role intact while the shared model learns the improver role).

        ``score_rejected`` (next-turn prompts only): the same forward pass also scores the drafts, returned as the
        ``rejected`` of the scores (laid out as `layout.pad_completions(drafts)`) for the DPO loss's rejected side.
        ``chosen`` (DPO steps, next turn): the rewrites, scored in the same packed pass where `Scorer.packed_scores`
        applies (then the scores' ``chosen`` is set). Returns the scores for the DPO loss, or None.
        """
        targets, keep = self._improver_targets(batch.drafts, batch.references, stats)
        scores = self.scorer.packed_scores(model, batch, prompts, targets, chosen, score_rejected)
        loss, rejected_logps = self._improver_loss(model, prompts, targets, keep, scale, stats, score_rejected, scores)
        if self.args.policy_sft_weight > 0:
            loss = loss + self.args.policy_sft_weight * self._policy_sft_loss(
                model, batch.prompt_ids, batch.prompt_mask, batch.references, scale, stats, scores
            )
        if scores is None and rejected_logps is not None:
            scores = Scores(rejected=rejected_logps)
        return loss, targets, keep, scores

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

    def _edit_toward(self, draft: Completion, reference: Completion) -> Completion:
        """The ``edit`` source's chosen side: the draft moved a fraction ``improver_alpha`` toward the reference."""
        tokens, _ = improver_target("interpolate", draft.token_ids, reference.token_ids, self.args.improver_alpha)
        return Completion(tokens, ended=True)

    def _add_pair_stats(
        self,
        stats: "_StepStats",
        chosen: list[Completion],
        drafts: list[Completion],
        references: list[Completion],
        pairs: PairFilterResult,
    ) -> None:
        stats.add("sgpo/pairs_kept", [float(k) for k in pairs.keep])
        for reason in DROP_REASONS:
            stats.add(f"sgpo/pairs_{reason}", [float(r == reason) for r in pairs.reasons])
        stats.add("sgpo/edit_distance", [edit_distance(c.token_ids, d.token_ids) for c, d in zip(chosen, drafts)])
        stats.add("sgpo/empty_batches", [float(pairs.num_kept == 0)], reduce="sum")
        # The health signal without a reward: is the chosen side closer to the SFT reference than the draft?
        closer = [
            float(edit_distance(c.token_ids, r.token_ids) < edit_distance(d.token_ids, r.token_ids))
            for c, d, r in zip(chosen, drafts, references)
        ]
        stats.add("sgpo/rewrite_closer", closer)

    def _check_rewrite_health(self) -> None:
        """Warn once when the improver's rewrites are rarely closer to the references than the drafts they rewrite.

        Judged over the first ``REWRITE_HEALTH_WINDOW`` DPO steps (values reduced over processes, so every process
        decides alike): the improver is not ready, and its pairs teach the policy little or the wrong thing.
        """
        if self._rewrite_health_checked:
            return
        self._rewrite_closer_history.append(self._metrics["sgpo/rewrite_closer"][-1])
        if len(self._rewrite_closer_history) < REWRITE_HEALTH_WINDOW:
            return
        self._rewrite_health_checked = True
        closer = sum(self._rewrite_closer_history) / len(self._rewrite_closer_history)
        if closer < REWRITE_CLOSER_WARNING_BELOW:
            logger.warning(
                "Over the first %d DPO steps only %.0f%% of the improver's rewrites were closer to the SFT reference "
                "than the draft they rewrote (sgpo/rewrite_closer; below %.0f%%). The improver role is not ready: "
                "lengthen Step 1 (improver_warmup_steps), raise improver_loss_weight, or check improver_template. "
                "See docs/troubleshooting.md.",
                REWRITE_HEALTH_WINDOW,
                100 * closer,
                100 * REWRITE_CLOSER_WARNING_BELOW,
            )

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

    def _keep_samples(
        self,
        phase: str,
        prompts: list,
        drafts: list[Completion],
        improved: list[Completion],
        verdicts: list[str],
        references: list[str] | None = None,
    ) -> None:
        # Kept pairs (or targets) first: the rows where the improver changed the draft are the ones worth reading.
        rows = sorted(range(len(prompts)), key=lambda i: verdicts[i] != "kept")[: self.num_sample_rows]
        decode = self.processing_class.decode
        self.last_samples = [
            {
                "phase": phase,
                "prompt": _last_turns(prompts[i]),
                "response": decode(drafts[i].token_ids, skip_special_tokens=True),
                "improved": decode(improved[i].token_ids, skip_special_tokens=True),
                "reference": references[i] if references is not None else "",
                "kept": verdicts[i],
            }
            for i in rows
        ]

    def _improver_targets(
        self, drafts: list[Completion], references: list[Completion], stats: "_StepStats"
    ) -> tuple[list[Completion], list[bool]]:
        targets, sizes = [], []
        for draft, reference in zip(drafts, references):
            tokens, size = improver_target(
                self.args.improver_target, draft.token_ids, reference.token_ids, self.args.improver_alpha
            )
            targets.append(Completion(tokens, ended=True))
            sizes.append(size)
        keep = select_targets(
            sizes,
            drop_unchanged=self.args.improver_drop_unchanged,
            filter_outliers=self.args.improver_filter_outliers,
            k=self.args.improver_outlier_k,
        )
        stats.add("sgpo/targets_kept", [float(k) for k in keep])
        stats.add("sgpo/target_edit_distance", [size for size, kept in zip(sizes, keep) if kept])
        return targets, keep

    def _dpo_loss(
        self,
        model,
        prompt_ids,
        prompt_mask,
        chosen: list[Completion],
        rejected: list[Completion],
        keep: list[bool],
        scale: float,
        stats: "_StepStats",
        scores: "Scores | None" = None,
    ) -> torch.Tensor:
        """The upstream DPO loss on [chosen; rejected] rows under the policy prompt, dropped pairs weighted 0.

        Its own forward pass (not batched with the template improver's rows, whose prompts are much longer: padding
        both to one width wasted most of the compute); the gradient graphs meet in the step's one backward. Where
        `Scorer.packs` allows, each prompt is one packed row ``[x | chosen | rejected]`` (`Scorer.pair_logps`), for
        the policy and the reference model alike. ``scores`` (next turn): the rejected side, per-token as
        `layout.pad_completions(rejected)` lays it out, was already scored by the fused pass, and the chosen side too
        when that pass was packed; whatever is missing is forwarded here.
        """
        batch_size = len(chosen)
        completions = chosen + rejected
        completion_ids, completion_mask = self.layout.pad_completions(completions)
        width = completion_ids.size(1)

        def padded(logps: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(logps, (0, width - logps.size(1)))[:, :width]

        if scores is None or scores.rejected is None:
            token_logps = self.scorer.pair_logps(
                model, prompt_ids, prompt_mask, chosen, rejected, completion_ids, completion_mask
            )
        else:
            if scores.chosen is not None:
                chosen_logps = padded(scores.chosen)
            else:
                chosen_logps = self.scorer.forward(
                    model, prompt_ids, prompt_mask, completion_ids[:batch_size], completion_mask[:batch_size]
                )
            token_logps = torch.cat((chosen_logps, padded(scores.rejected)), dim=0)
        token_logps = token_logps * completion_mask
        sequence_logps = token_logps.sum(1)
        keep = torch.tensor(keep, dtype=sequence_logps.dtype, device=sequence_logps.device)
        pair = (prompt_ids, prompt_mask, chosen, rejected, completion_ids, completion_mask)
        with torch.no_grad():
            if self.ref_model is not None:
                ref_logps = self.scorer.pair_logps(self.ref_model, *pair)
            else:  # PEFT: the reference is the base model with the adapter disabled
                with self.model.disable_adapter():
                    ref_logps = self.scorer.pair_logps(self.model, *pair)
            ref_sequence_logps = (ref_logps * completion_mask).sum(1)
        chosen_logps, rejected_logps = sequence_logps.split(batch_size)
        chosen_ref_logps, rejected_ref_logps = ref_sequence_logps.split(batch_size)
        losses = preference_loss(
            chosen_logps, rejected_logps, chosen_ref_logps, rejected_ref_logps, self.beta, self.args.loss_type
        )
        loss = (losses * keep).sum() * scale
        if self.args.chosen_nll_weight > 0:
            chosen_lengths = completion_mask[:batch_size].sum(1).clamp(min=1)
            loss = loss + self.args.chosen_nll_weight * (-chosen_logps / chosen_lengths * keep).sum() * scale

        kept = keep.bool()
        chosen_rewards = self.beta * (chosen_logps - chosen_ref_logps).detach()
        rejected_rewards = self.beta * (rejected_logps - rejected_ref_logps).detach()
        stats.add("sgpo/dpo_loss", losses.detach()[kept].tolist())
        stats.add("rewards/chosen", chosen_rewards[kept].tolist())
        stats.add("rewards/rejected", rejected_rewards[kept].tolist())
        stats.add("rewards/margins", (chosen_rewards - rejected_rewards)[kept].tolist())
        stats.add("rewards/accuracies", (chosen_rewards > rejected_rewards)[kept].float().tolist())
        stats.add("logps/chosen", chosen_logps.detach()[kept].tolist())
        stats.add("logps/rejected", rejected_logps.detach()[kept].tolist())
        # KL and entropy of the policy's own samples (the rejected side), as the parent estimates them.
        rejected_ref_tokens = (ref_logps * completion_mask)[batch_size:]
        kl = (token_logps[batch_size:].detach() - rejected_ref_tokens).sum(1)
        stats.add("objective/kl", kl.tolist())
        stats.add("objective/entropy", (-rejected_logps.detach()).tolist())
        stats.add("beta", [self.beta])  # the same on every process, so its mean over processes is itself
        return loss

    def _policy_sft_loss(
        self,
        model,
        prompt_ids,
        prompt_mask,
        references: list[Completion],
        scale: float,
        stats: "_StepStats",
        scores: "Scores | None" = None,
    ) -> torch.Tensor:
        """The policy's own SFT loss: token-mean NLL of each reference (and its EOS) under the plain prompt.

        Mixed into improver updates so that training the improver role does not erase the policy role. The
        references' log-probabilities come from ``scores`` (the packed pass) when it holds them.
        """
        reference_ids, reference_mask = self.layout.pad_completions(references)
        if scores is not None and scores.reference is not None:
            logps = scores.reference
        else:
            logps = self.scorer.forward(model, prompt_ids, prompt_mask, reference_ids, reference_mask)
        nll = -(logps * reference_mask).sum(1) / reference_mask.sum(1).clamp(min=1)
        stats.add("sgpo/policy_sft_loss", nll.detach().tolist())
        return nll.sum() * scale

    def _improver_loss(
        self,
        model,
        prompts: "ImproverPrompts",
        targets: list[Completion],
        keep: list[bool],
        scale: float,
        stats: "_StepStats",
        score_rejected: bool = False,
        scores: "Scores | None" = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Supervised loss of the improver role: token-mean NLL of each kept target under its improver prompt.

        With ``score_rejected`` (next-turn prompts), the one forward pass also yields the log-probabilities of each
        draft inside the prompt (the policy's own sample, in the policy's own context): returned right-padded like
        `layout.pad_completions(drafts)`, else None. ``scores``: both already computed by the packed pass.
        """
        target_ids, target_mask = self.layout.pad_completions(targets)
        if scores is not None:
            logps, rejected_logps = scores.target, scores.rejected if score_rejected else None
        else:
            tail, tail_mask = 0, None
            if score_rejected:  # score the drafts at the end of the prompt block, not the new turn after them
                tail = max(r + a for r, a in zip(prompts.rejected_lengths, prompts.after_lengths))
                offsets = torch.arange(tail, device=target_ids.device).unsqueeze(0)
                after = torch.tensor(prompts.after_lengths, device=target_ids.device).unsqueeze(1)
                rejected = torch.tensor(prompts.rejected_lengths, device=target_ids.device).unsqueeze(1)
                tail_mask = (offsets >= tail - after - rejected) & (offsets < tail - after)
            logps = self.scorer.forward(
                model, prompts.ids, prompts.mask, target_ids, target_mask, prompt_tail=tail, tail_mask=tail_mask
            )
            rejected_logps = self._rejected_from_tail(logps[:, :tail], prompts) if score_rejected else None
            logps = logps[:, tail:]
        nll = -(logps * target_mask).sum(1) / target_mask.sum(1).clamp(min=1)
        keep = torch.tensor(keep, dtype=nll.dtype, device=nll.device)
        stats.add("sgpo/improver_loss", nll.detach()[keep.bool()].tolist())
        return (nll * keep).sum() * scale, rejected_logps

    @staticmethod
    def _rejected_from_tail(tail_logps: torch.Tensor, prompts: "ImproverPrompts") -> torch.Tensor:
        """The drafts' log-probabilities out of the scored prompt tail, right-padded (zeros) to the longest draft.

        Row ``i`` of the tail ends with its draft (``rejected_lengths[i]`` tokens) and then ``after_lengths[i]``
        tokens of the new turn; rows are left-padded, so both are counted from the right.
        """
        tail = tail_logps.size(1)
        rejected = torch.tensor(prompts.rejected_lengths, device=tail_logps.device)
        after = torch.tensor(prompts.after_lengths, device=tail_logps.device)
        width = max(1, int(rejected.max()))
        offsets = torch.arange(width, device=tail_logps.device)
        index = (tail - after - rejected).unsqueeze(1) + offsets.unsqueeze(0)
        valid = offsets.unsqueeze(0) < rejected.unsqueeze(1)
        return tail_logps.gather(1, index.clamp(0, max(tail - 1, 0))) * valid

    # ------------------------------------------------------------- metrics

    def _record(self, stats: "_StepStats", phase: str) -> None:
        """Reduce this step's statistics over processes (one collective) and buffer their means for logging."""
        names = list(stats.sums)
        totals = torch.tensor(
            [[stats.sums[name], stats.counts[name]] for name in names],
            dtype=torch.float64,
            device=self.accelerator.device,
        )
        if self.accelerator.num_processes > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        for name, (total, count) in zip(names, totals.tolist()):
            mode = stats.modes[name]
            if mode == "sum":
                self._metrics[name].append(total)
            else:  # NaN where no process had a value (no pair kept): the key stays on the log line
                self._metrics[name].append(total / count if count > 0 else math.nan)
        self._metrics["sgpo/phase"].append(float(PHASE_IDS[phase]))

    def _maybe_log_save_evaluate(self, *args, **kwargs):
        # The parent averages every list in `self.stats` and divides by zero on an empty one; a logging window may
        # hold only one phase, so hand it just the statistics that were recorded in this window.
        # Each list is averaged here, NaN steps left out (a window with one no-pair step keeps the others' mean);
        # NaN only where no step of the window had a value.
        if self.control.should_log and self.state.global_step > self._globalstep_last_logged:
            self.stats = {name: [_nan_mean(values)] for name, values in self._metrics.items() if values}
            self._metrics = defaultdict(list)
        return super()._maybe_log_save_evaluate(*args, **kwargs)

    # ------------------------------------------------------------ evaluation

    def prediction_step(
        self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys=None
    ) -> tuple[torch.Tensor, None, None]:
        """Evaluation loss: the policy's token-mean NLL of the SFT references.

        Upstream has no `prediction_step` for prompt-only data and crashes in `Trainer.compute_loss`. The reference
        NLL needs no sampling, so it is deterministic and comparable between evaluations.
        """
        texts = self.layout.policy_prompt_texts(inputs["prompt"])
        prompt_ids, prompt_mask = self.layout.tokenize_prompts(texts)
        references = [
            self.layout.reference_completion(reference_text(completion)) for completion in inputs["completion"]
        ]
        completion_ids, completion_mask = self.layout.pad_completions(references)
        with torch.no_grad():
            logps = self.scorer.forward(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
            loss = -(logps * completion_mask).sum() / completion_mask.sum()
        return loss.detach(), None, None

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ):
        """The parent's loop (the reference NLL as `eval_loss`), plus `eval_metric` on greedy generations."""
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.eval_metric is not None:
            for name, value in self._generation_metrics(dataloader).items():
                output.metrics[f"{metric_key_prefix}_{name}"] = value
        return output

    def _generation_metrics(self, dataloader) -> dict[str, float]:
        predictions, references = [], []
        model = self.model_wrapped
        model.eval()
        for batch in dataloader:
            texts = self.layout.policy_prompt_texts(batch["prompt"])
            prompt_ids, prompt_mask = self.layout.tokenize_prompts(texts)
            completions = self.sampler(model, texts, prompt_ids, prompt_mask, "eval", cache=None)
            predictions += self.processing_class.batch_decode(
                [c.token_ids for c in completions], skip_special_tokens=True
            )
            references += [reference_text(completion) for completion in batch["completion"]]
        predictions, references = gather_object(predictions), gather_object(references)
        if callable(self.eval_metric) and not hasattr(self.eval_metric, "compute"):
            scores = self.eval_metric(predictions=predictions, references=references)
        else:
            scores = self.eval_metric.compute(predictions=predictions, references=references)
        return {name: float(value) for name, value in scores.items() if isinstance(value, (int, float))}

    # ------------------------------------------------------- reference model

    def _sync_ref_model(self) -> None:
        if self.ref_model is None or self._ref_synced_at_step == self.state.global_step:
            return
        model = self.accelerator.unwrap_model(self.model)
        SyncRefModelCallback.sync_target_model(model, self.accelerator.unwrap_model(self.ref_model), alpha=1.0)
        self._ref_synced_at_step = self.state.global_step

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        # A re-synced reference model is state: a run resumed mid-DPO-phase needs the one synced at the phase start.
        if self.args.sync_ref_model_each_dpo_phase and self.ref_model is not None and self.is_world_process_zero():
            folder = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            save_model(self.accelerator.unwrap_model(self.ref_model), os.path.join(folder, REF_MODEL_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        ref_file = os.path.join(resume_from_checkpoint, REF_MODEL_FILE)
        if self.ref_model is not None and os.path.isfile(ref_file):
            load_model(self.accelerator.unwrap_model(self.ref_model), ref_file)

    # ------------------------------------------------------------ saving

    def create_model_card(
        self, model_name: str | None = None, dataset_name: str | None = None, tags: str | list[str] | None = None
    ) -> None:
        """TRL's model card (tags `trl` and `sgpo`, the SGPO citation), plus a table of this run's SGPO settings."""
        dataset_name = dataset_name or self.dataset_name
        hub_dataset = dataset_name if is_hub_dataset(dataset_name) else None  # a local file has no Hub page to link
        super().create_model_card(model_name=model_name, dataset_name=hub_dataset, tags=tags)
        if not self.is_world_process_zero():
            return
        from . import __version__

        path = os.path.join(self.args.output_dir, "README.md")
        with open(path, encoding="utf-8") as handle:
            card = handle.read()
        model_path = getattr(self.accelerator.unwrap_model(self.model).config, "_name_or_path", "")
        card = describe_sources(card, model_path, dataset_name, self.args.output_dir)
        section = config_section(self.args, __version__)
        card = card.replace("## Citations", section + "## Citations", 1) if "## Citations" in card else card + section
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(card)

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        try:
            super().init_hf_repo(token=token, private=private)
        except Exception as error:  # network, token or permission: say which repo and what to do
            raise RuntimeError(
                f"Could not create or reach the Hub repo {self.args.hub_model_id or self.args.output_dir!r}: "
                f"{type(error).__name__}: {error}. Check the network, HF_ENDPOINT and your token (`hf auth login`), "
                "or train without --push_to_hub and upload the saved output_dir later."
            ) from error

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, **kwargs):
        """Upload the model, tokenizer and model card; on failure the local save in `output_dir` is kept."""
        kwargs.setdefault("dataset_name", self.dataset_name)
        try:
            return super().push_to_hub(commit_message=commit_message, blocking=blocking, **kwargs)
        except Exception as error:
            raise RuntimeError(
                f"Pushing to the Hub failed ({type(error).__name__}: {error}). The model, tokenizer and model card "
                f"are saved in {self.args.output_dir!r}; fix the network or token and call `trainer.push_to_hub()` "
                f"again, or upload that folder with `hf upload`."
            ) from error

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model and tokenizer, and (outside checkpoints) the SGPO model card beside them."""
        super().save_model(output_dir, _internal_call)
        if not _internal_call and self.is_world_process_zero():
            self.create_model_card(model_name=os.path.basename(os.path.normpath(output_dir or self.args.output_dir)))
            card = os.path.join(self.args.output_dir, "README.md")
            if output_dir and os.path.abspath(output_dir) != os.path.abspath(self.args.output_dir):
                os.replace(card, os.path.join(output_dir, "README.md"))


@dataclass
class _Batch:
    """One micro-batch as both phases see it: prompts (raw and tokenized), the policy's drafts, the references."""

    prompts: list
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    drafts: list[Completion]
    reference_texts: list[str]
    references: list[Completion]
    draft_cache: DraftCache | None = None


class _StepStats:
    """Per-step sums and counts, reduced over processes in one collective by `SGPOTrainer._record`."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}
        self.modes: dict[str, str] = {}

    def add(self, name: str, values: list[float], reduce: str = "mean") -> None:
        """``mean``: the mean over all values of all processes; ``sum``: the total over processes."""
        self.sums[name] = float(sum(values))
        self.counts[name] = float(len(values))
        self.modes[name] = reduce
