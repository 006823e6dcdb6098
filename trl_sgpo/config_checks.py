"""The checks of an `SGPOConfig`'s fields, run when it is built: each refusal names the problem and the fix.

Here rather than in config.py so that the configuration reads as its fields; `SGPOConfig.__post_init__` calls
`check_config`.
"""

import warnings

from trl.import_utils import is_vllm_available

from .data.prompt_lengths import LONG_PROMPT_MODES, PromptBudget
from .method.improver import IMPROVER_FORMATS, TARGET_STRATEGIES, validate_instruction, validate_template
from .method.objectives import LOSS_TYPES, POLICY_SFT_TARGETS
from .method.pairs import PAIR_GATES, PAIR_SOURCES
from .method.schedule import WARMUP_DRAFT_SOURCES, PhaseSchedule


def check_config(config) -> None:
    """Reject the bad settings of an `SGPOConfig`, with the problem and the fix, before any model is loaded."""
    if config.reward_model_path is not None or config.reward_weights is not None or config.missing_eos_penalty:
        raise ValueError(
            "SGPO uses no reward: unset `reward_model_path`, `reward_weights` and `missing_eos_penalty`. The "
            "chosen side of each pair comes from the improver role (or the reference with pair_source='spin')."
        )
    if config.loss_type not in LOSS_TYPES:
        raise ValueError(
            f"Unknown loss_type {config.loss_type!r}: SGPO supports {list(LOSS_TYPES)} (TRL's DPO and IPO losses)."
        )
    if config.improver_target not in TARGET_STRATEGIES:
        raise ValueError(
            f"Unknown improver_target {config.improver_target!r}: choose one of {sorted(TARGET_STRATEGIES)}."
        )
    if config.improver_format not in IMPROVER_FORMATS:
        raise ValueError(
            f"Unknown improver_format {config.improver_format!r}: choose one of {list(IMPROVER_FORMATS)} "
            "('auto': next_turn where the chat template allows, else template; 'template': a user turn built "
            "from improver_template; 'next_turn': the next turn of the policy's conversation)."
        )
    validate_instruction(config.improver_instruction)
    if config.pair_source not in PAIR_SOURCES:
        raise ValueError(f"Unknown pair_source {config.pair_source!r}: choose one of {sorted(PAIR_SOURCES)}.")
    if config.pair_gate not in PAIR_GATES:
        raise ValueError(f"Unknown pair_gate {config.pair_gate!r}: choose one of {sorted(PAIR_GATES)}.")
    if config.improver_warmup_only and config.pair_source != "sgpo":
        raise ValueError(
            f"improver_warmup_only trains the improver role alone, and pair_source={config.pair_source!r} has none: "
            "unset improver_warmup_only, or use pair_source='sgpo'."
        )
    if config.pair_gate in ("improver_keep", "round_trip") and config.pair_source != "sgpo":
        raise ValueError(
            f"pair_gate={config.pair_gate!r} asks the improver about its rewrite, and pair_source="
            f"{config.pair_source!r} has no improver: use pair_gate='reference_margin' or 'none'."
        )
    if not 0.0 <= config.improver_alpha <= 1.0:
        raise ValueError(
            f"improver_alpha must be in [0, 1] (the fraction of edits applied), got {config.improver_alpha}."
        )
    if config.improver_outlier_k < 0:
        raise ValueError(
            f"improver_outlier_k must be >= 0, got {config.improver_outlier_k}; to switch the filter off set "
            "improver_filter_outliers=False."
        )
    betas = config.beta if isinstance(config.beta, list) else [config.beta]
    if any(b <= 0 for b in betas):
        raise ValueError(f"beta must be > 0 (it scales the DPO log-ratio), got {config.beta}.")
    # The schedule's own rules (non-negative lengths, at least one step, a whole or fractional warm-up).
    PhaseSchedule(config.improver_warmup_steps, config.improver_steps, config.dpo_steps, config.num_cycles)
    if config.policy_sft_target not in POLICY_SFT_TARGETS:
        raise ValueError(
            f"Unknown policy_sft_target {config.policy_sft_target!r}: choose one of {list(POLICY_SFT_TARGETS)}."
        )
    for name in ("improver_loss_weight", "chosen_nll_weight", "policy_sft_weight"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name} must be >= 0 (0 disables the term), got {getattr(config, name)}.")
    if config.improver_speculative_tokens < 0:
        raise ValueError(
            f"improver_speculative_tokens must be >= 0 (0: off), got {config.improver_speculative_tokens}."
        )
    if config.improver_speculative_tokens and config.use_vllm:
        raise ValueError(
            "improver_speculative_tokens speculates with transformers generation; TRL's VLLMGeneration builds "
            "the vLLM engine without a speculative config. Set improver_speculative_tokens=0 with use_vllm=True."
        )
    if config.use_vllm and not is_vllm_available():
        raise ImportError(
            "use_vllm=True but vLLM is not installed: `pip install trl-sgpo[vllm]` (needs a CUDA GPU), or set "
            "use_vllm=False to generate with transformers."
        )
    if config.improver_learning_rate is not None and config.improver_learning_rate <= 0:
        raise ValueError(
            f"improver_learning_rate must be > 0 (unset: learning_rate), got {config.improver_learning_rate}."
        )
    if config.improver_max_new_tokens is not None and config.improver_max_new_tokens < 1:
        raise ValueError(f"improver_max_new_tokens must be >= 1, got {config.improver_max_new_tokens}.")
    if config.num_completions_to_print is not None and config.num_completions_to_print < 1:
        raise ValueError(
            f"num_completions_to_print must be >= 1 (unset: all rows), got {config.num_completions_to_print}."
        )
    if config.long_prompts not in LONG_PROMPT_MODES:
        raise ValueError(f"long_prompts must be one of {list(LONG_PROMPT_MODES)}, got {config.long_prompts!r}.")
    if config.improver_temperature is not None and config.improver_temperature < 0:
        raise ValueError(f"improver_temperature must be >= 0 (0 = greedy), got {config.improver_temperature}.")
    _check_length_budget(config)
    _check_readiness(config)
    _check_warmup_drafts(config)
    if config.pair_source == "sgpo" and config.improver_filter_outliers and config.per_device_train_batch_size < 4:
        warnings.warn(
            f"per_device_train_batch_size={config.per_device_train_batch_size}: the improver's outlier filter "
            "(improver_filter_outliers) needs at least 4 targets per micro-batch, so it never acts. Use a "
            "micro-batch of 4 or more (and fewer gradient_accumulation_steps for the same total batch), or set "
            "improver_filter_outliers=False to silence this.",
            UserWarning,
            stacklevel=5,  # the line that built the config (one call deeper than in config.py)
        )
    if isinstance(config.improver_template, str):
        validate_template(config.improver_template)
    elif not callable(config.improver_template):
        raise TypeError(
            "improver_template must be a string with {prompt} and {response} or a callable "
            f"(prompt, response) -> str | messages, got {type(config.improver_template).__name__}."
        )


def _check_warmup_drafts(config) -> None:
    if config.improver_warmup_drafts not in WARMUP_DRAFT_SOURCES:
        raise ValueError(
            f"improver_warmup_drafts must be one of {list(WARMUP_DRAFT_SOURCES)}, got "
            f"{config.improver_warmup_drafts!r}."
        )


def _check_readiness(config) -> None:
    if config.improver_ready_at is None:
        return
    if not 0 < config.improver_ready_at <= 1:
        raise ValueError(f"improver_ready_at must be a share in (0, 1], got {config.improver_ready_at}.")
    if config.improver_readiness_steps < 1 or config.improver_readiness_prompts < 1:
        raise ValueError("improver_readiness_steps and improver_readiness_prompts must be >= 1.")
    if config.pair_source != "sgpo" or config.improver_warmup_steps == 0:
        raise ValueError(
            "improver_ready_at ends Step 1 early, so it needs pair_source='sgpo' and a Step 1 to end "
            f"(improver_warmup_steps > 0, its cap; got {config.improver_warmup_steps})."
        )


def _check_length_budget(config) -> None:
    """The generated tokens alone must leave room for a prompt in `max_length` (no tokenizer needed).

    The improver's sequence is the longest SGPO scores: template and prompt, a draft of `max_new_tokens`, then
    a rewrite of `improver_max_new_tokens` (`prompt_lengths.PromptBudget`). The template's own tokens are counted
    when the trainer is built, and every prompt is measured then.
    """
    if config.max_length is None:
        return
    budget = PromptBudget.of_generation(config)
    if budget.available < 1:
        raise ValueError(
            f"{budget.arithmetic()} tokens for the prompt and the improver template: nothing fits. Raise "
            f"max_length above {config.max_length - budget.available} plus your longest prompt and the template, "
            "or lower max_new_tokens / improver_max_new_tokens."
        )
