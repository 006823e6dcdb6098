"""Sampling for both roles: one completion per prompt, with transformers `generate` or vLLM, and the draft's cache.

`SGPOTrainer` asks its ``sampler`` (a `Sampler` by default) for the policy's drafts, the improver's rewrites and
greedy evaluation answers. The sampler is the trainer's seam for tests: any callable
``sampler(model, prompt_ids, prompt_mask, role, cache=None, drafts=None) -> list[Completion]`` can take its place.
"""

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from transformers import GenerationConfig
from transformers.generation.utils import GenerateDecoderOnlyOutput
from trl.experimental.utils import truncate_right
from trl.models.utils import unwrap_model_for_generation

from ..records import Completion
from .speculation import SpeculationStats, speculative_generate, unsupported_settings


ROLES = ("policy", "improver", "eval")


# `generate` takes and returns the KV cache as `cache` in recent transformers, `past_key_values` before.
def improver_sampling(args: Any) -> tuple[float, float, int]:
    """The improver role's (temperature, top-p, max new tokens): its own settings where set, else the policy's."""
    temperature = args.temperature if args.improver_temperature is None else args.improver_temperature
    top_p = args.top_p if args.improver_top_p is None else args.improver_top_p
    return temperature, top_p, args.improver_max_new_tokens or args.max_new_tokens


_CACHE_KWARG = "cache" if "cache" in GenerateDecoderOnlyOutput.__dataclass_fields__ else "past_key_values"


@dataclass
class DraftCache:
    """The policy's generation state kept for the improver's next turn (transformers generation only).

    ``cache`` holds the keys and values of the prompts and of every generated token but the last; ``generated_ids``
    are the generated tokens as `generate` returned them (padding after a row's EOS), ``generated_mask`` marks each
    row's tokens up to and including its EOS.
    """

    cache: Any = None
    generated_ids: torch.Tensor | None = None
    generated_mask: torch.Tensor | None = None


def generation_work(prompt_ids: torch.Tensor, completions: list[Completion], cached: int = 0) -> dict[str, float]:
    """What one generation call did, for a step's record: its rows, the prompt tokens fed in (``cached`` tokens per
    row were already in a KV cache and are not fed again), and the tokens generated (an EOS counts as one)."""
    rows = prompt_ids.size(0)
    return {
        "generate_calls": 1,
        "generated_rows": rows,
        "generation_prompt_tokens": prompt_ids.numel() - cached * rows,
        "generation_cached_tokens": cached * rows,
        "generated_tokens": sum(len(c.token_ids) + int(c.ended) for c in completions),
    }


class Sampler:
    """One completion per prompt for a role (``"policy"``, ``"improver"``; ``"eval"`` and ``"improver_greedy"``:
    greedy).

    The improver has its own temperature, top-p and length (``improver_temperature``, ``improver_top_p``,
    ``improver_max_new_tokens``; unset: the policy's).

    Args:
        args: the `SGPOConfig`.
        generation_kwargs: the policy's transformers generation settings (TRL's online DPO trainer builds them).
        eos_token_ids: the ids generation stops on (the chat template's end-of-turn token among them).
        pad_token_id: the padding id of generated rows.
        accelerator: the run's `accelerate.Accelerator` (unwrapping the model for generation).
        profile: a context manager per named stage (TRL's `profiling_context`, bound to the trainer).
        wrapped_model: the model as the run wraps it (FSDP gathers its parameters for generation).
        is_fsdp_enabled: whether the run shards the model with FSDP.
        vllm_roles: samples with vLLM (`vllm_engine.VLLMRoles`) instead of transformers, when given.
    """

    def __init__(
        self,
        args: Any,
        generation_kwargs: dict[str, Any],
        eos_token_ids: list[int],
        pad_token_id: int,
        accelerator: Any,
        profile: Callable[[str], AbstractContextManager],
        wrapped_model: Callable[[], nn.Module],
        is_fsdp_enabled: bool = False,
        vllm_roles: Any = None,
    ):
        self.args = args
        self.eos_token_ids = eos_token_ids
        self.pad_token_id = pad_token_id
        self.accelerator = accelerator
        self.profile = profile
        self.wrapped_model = wrapped_model
        self.is_fsdp_enabled = is_fsdp_enabled
        self.vllm_roles = vllm_roles
        improver_temperature, improver_top_p, self.improver_max_new_tokens = improver_sampling(args)
        # The KV cache, always (unless generation_kwargs says otherwise): the parent turns it off under gradient
        # checkpointing, yet `unwrap_model_for_generation` disables checkpointing while generating, so the cache is
        # safe there; without it every token recomputes the whole sequence and the next turn has no draft cache.
        use_cache = (args.generation_kwargs or {}).get("use_cache", True)
        # eos_token_id: the trainer's, which includes the chat template's end-of-turn token
        policy_kwargs = {**generation_kwargs, "use_cache": use_cache, "eos_token_id": eos_token_ids}
        improver_kwargs = {
            **policy_kwargs,
            "max_new_tokens": self.improver_max_new_tokens,
            "temperature": improver_temperature,
            "top_p": improver_top_p,
        }
        if improver_temperature == 0:  # greedy: transformers rejects temperature 0 with sampling
            improver_kwargs.update(do_sample=False)
            for key in ("temperature", "top_p", "top_k", "min_p"):
                improver_kwargs.pop(key, None)
        greedy_kwargs = {k: v for k, v in policy_kwargs.items() if k not in ("temperature", "top_p", "top_k")}
        greedy_kwargs.update(do_sample=False)
        improver_greedy = {k: v for k, v in improver_kwargs.items() if k not in ("temperature", "top_p", "top_k")}
        improver_greedy.update(do_sample=False)
        # role -> (generation config, the kwargs `unwrap_model_for_generation` reads, e.g. use_cache)
        self.hf_generation = {
            "eval": (GenerationConfig(**greedy_kwargs), greedy_kwargs),
            "policy": (GenerationConfig(**policy_kwargs), policy_kwargs),
            "improver": (GenerationConfig(**improver_kwargs), improver_kwargs),
            "improver_greedy": (GenerationConfig(**improver_greedy), improver_greedy),  # Step 1's readiness
        }
        self.speculative_tokens = args.improver_speculative_tokens
        if self.speculative_tokens and (unsupported := unsupported_settings(self.hf_generation["improver"][0])):
            raise ValueError(
                f"improver_speculative_tokens cannot reproduce the improver's sampling with {', '.join(unsupported)} "
                "(generation_kwargs): unset them, or set improver_speculative_tokens=0."
            )

    def __call__(
        self,
        model: nn.Module,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        role: str,
        cache: DraftCache | None = None,
        drafts: list[Completion] | None = None,
        speculation: SpeculationStats | None = None,
    ) -> list[Completion]:
        """One completion per prompt for ``role``.

        ``cache`` (transformers generation only): for the policy, an empty holder that receives the drafts' KV cache
        and generated tokens; for the improver, a filled one that the generation continues from (``prompt_ids`` are
        then laid out as the cached prompt and drafts followed by the new turn, see `PromptLayout.next_turn_prompts`).
        vLLM ignores it: its prefix caching reuses the shared prefix by itself. ``drafts`` (the improver, with
        ``improver_speculative_tokens``): the drafts being rewritten, whose tokens the rewrite is speculated from;
        ``speculation`` receives what the speculation did (`SpeculationStats`).
        """
        if self.vllm_roles is not None:
            return self._sample_vllm(prompt_ids, prompt_mask, role)
        generation_config, generation_kwargs = self.hf_generation[role]
        extra: dict[str, Any] = {}
        if cache is not None and cache.cache is not None:  # continue from the drafts
            extra[_CACHE_KWARG] = cache.cache
        elif cache is not None:  # keep the drafts' cache
            generation_config = copy.deepcopy(generation_config)
            generation_config.return_dict_in_generate = True
        with (
            self.profile(f"transformers.generate.{role}"),
            unwrap_model_for_generation(
                model,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                generation_kwargs=generation_kwargs,
                # re-enabled after generation with the user's settings (upstream's default drops them)
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped_model,
            torch.no_grad(),
            FSDP.summon_full_params(self.wrapped_model(), recurse=False) if self.is_fsdp_enabled else nullcontext(),
        ):
            if drafts is not None and self.speculative_tokens and role.startswith("improver"):
                stats = speculation if speculation is not None else SpeculationStats()
                output = self._speculate(
                    unwrapped_model, prompt_ids, prompt_mask, drafts, generation_config, extra, stats
                )
            else:
                output = unwrapped_model.generate(
                    input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=generation_config, **extra
                )
        if cache is not None and cache.cache is not None:
            cache.cache = None  # used up (extended by this call): free it before the backward pass
        elif cache is not None:
            kv = getattr(output, "cache", None)
            cache.cache = kv if kv is not None else getattr(output, "past_key_values", None)
            output = output.sequences
            cache.generated_ids = output[:, prompt_ids.size(1) :]
            cache.generated_mask = truncate_right(cache.generated_ids, self.eos_token_ids, self.pad_token_id)[1]
        return self._split_completions(output[:, prompt_ids.size(1) :])

    def _speculate(self, model, prompt_ids, prompt_mask, drafts, generation_config, extra, stats) -> torch.Tensor:
        """The rewrites speculated from the drafts' tokens (`speculation.speculative_generate`), on the drafts' cache
        where there is one; what it did is added to ``stats``."""
        # `generate` fills what the config leaves unset from the model's own generation config: the same here
        resolved, _ = model._prepare_generation_config(copy.deepcopy(generation_config))
        draft_tokens = [d.token_ids + ([d.end_token] if d.end_token is not None else []) for d in drafts]
        return speculative_generate(
            model,
            prompt_ids,
            prompt_mask,
            draft_tokens,
            resolved,
            self.eos_token_ids,
            cache=extra.get(_CACHE_KWARG),
            num_speculative_tokens=self.speculative_tokens,
            stats=stats,
        )

    def _split_completions(self, completion_ids: torch.Tensor) -> list[Completion]:
        """Generated rows -> content tokens up to the first EOS, and whether an EOS was sampled at all."""
        eos_token_ids, pad_token_id = self.eos_token_ids, self.pad_token_id
        completion_ids, mask = truncate_right(completion_ids, eos_token_ids, pad_token_id)
        return [
            Completion.from_generated(ids[: sum(row_mask)], eos_token_ids)
            for ids, row_mask in zip(completion_ids.tolist(), mask.tolist())
        ]

    def _sample_vllm(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, role: str) -> list[Completion]:
        """vLLM sampling (`vllm_roles`, on TRL's `VLLMGeneration`) from the prompts' token ids.

        Token ids, not text: the improver's next-turn prompt holds the draft exactly as sampled, which decoding and
        re-tokenizing does not always give back (and a rendered Llama 3 prompt tokenized again gets a second BOS).
        """
        roles = self.vllm_roles
        prompts = [row[mask.bool()].tolist() for row, mask in zip(prompt_ids, prompt_mask)]  # without left padding
        completion_ids = roles(prompts, role)
        # Shorter than max_tokens without an EOS: stopped by a stop token vLLM left out of the ids.
        return [
            Completion.from_generated(ids, self.eos_token_ids, stopped=len(ids) < roles.max_tokens(role))
            for ids in completion_ids
        ]
