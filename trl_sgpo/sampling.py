"""Sampling for both roles: one completion per prompt, with transformers `generate` or vLLM, and the draft's cache.

`SGPOTrainer` asks its ``sampler`` (a `Sampler` by default) for the policy's drafts, the improver's rewrites and
greedy evaluation answers. The sampler is the trainer's seam for tests and benchmarks: any callable
``sampler(model, texts, prompt_ids, prompt_mask, role, cache=None) -> list[Completion]`` can take its place.
"""

import copy
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, gather_object
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from transformers import GenerationConfig
from transformers.generation.utils import GenerateDecoderOnlyOutput
from trl.experimental.utils import truncate_right
from trl.extras.profiling import profiling_context
from trl.models.utils import unwrap_model_for_generation

from .pairs import Completion


ROLES = ("policy", "improver", "eval")
# `generate` takes and returns the KV cache as `cache` in recent transformers, `past_key_values` before.
# The sampling settings `VLLMClient.generate` takes by name (TRL 1.16); others go in its `generation_kwargs`.
_CLIENT_PARAMETERS = ("n", "repetition_penalty", "temperature", "top_p", "top_k", "min_p", "max_tokens", "logprobs")


def vllm_sampling_params(**settings: Any) -> Any:
    """vLLM's `SamplingParams` (imported only where vLLM runs)."""
    from vllm import SamplingParams

    return SamplingParams(**settings)


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


class Sampler:
    """One completion per prompt for a role (``"policy"``, ``"improver"`` or ``"eval"``, greedy).

    Built by `SGPOTrainer` after the parent's set-up, whose generation settings, vLLM engine or client and weight
    sync it uses (held through ``trainer``). The improver has its own temperature, top-p and length
    (``improver_temperature``, ``improver_top_p``, ``improver_max_new_tokens``; unset: the policy's).
    """

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self._vllm_weights_asleep = False  # colocated vLLM in sleep mode level 2 has discarded the weights
        args = trainer.args
        improver_temperature = args.temperature if args.improver_temperature is None else args.improver_temperature
        self.improver_max_new_tokens = args.improver_max_new_tokens or args.max_new_tokens
        improver_top_p = args.top_p if args.improver_top_p is None else args.improver_top_p
        if trainer.use_vllm:
            base = {
                "repetition_penalty": args.repetition_penalty,
                "top_k": args.top_k or 0,  # 0: no truncation (vLLM and TRL 1.16's client)
                "min_p": args.min_p or 0.0,
                "n": 1,
                "detokenize": False,
                **(args.generation_kwargs or {}),
            }
            self.vllm_sampling = {
                "eval": {**base, "temperature": 0.0, "max_tokens": args.max_new_tokens},
                "policy": {
                    **base,
                    "temperature": args.temperature,
                    "top_p": args.top_p,
                    "max_tokens": args.max_new_tokens,
                },
                "improver": {
                    **base,
                    "temperature": improver_temperature,
                    "top_p": improver_top_p,
                    "max_tokens": self.improver_max_new_tokens,
                },
                "improver_greedy": {**base, "temperature": 0.0, "max_tokens": self.improver_max_new_tokens},
            }
            return
        # The KV cache, always (unless generation_kwargs says otherwise): the parent turns it off under gradient
        # checkpointing, yet `unwrap_model_for_generation` disables checkpointing while generating, so the cache is
        # safe there; without it every token recomputes the whole sequence and the next turn has no draft cache.
        use_cache = (args.generation_kwargs or {}).get("use_cache", True)
        # eos_token_id: the trainer's, which includes the chat template's end-of-turn token
        policy_kwargs = {**trainer.generation_kwargs, "use_cache": use_cache, "eos_token_id": trainer.eos_token_ids}
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

    def __call__(
        self,
        model: nn.Module,
        texts: list[str],
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        role: str,
        cache: DraftCache | None = None,
    ) -> list[Completion]:
        """One completion per prompt for ``role``.

        ``cache`` (transformers generation only): for the policy, an empty holder that receives the drafts' KV cache
        and generated tokens; for the improver, a filled one that the generation continues from (``prompt_ids`` are
        then laid out as the cached prompt and drafts followed by the new turn, see `PromptLayout.next_turn_prompts`).
        vLLM ignores it: its prefix caching reuses the shared prefix by itself.
        """
        trainer = self.trainer
        if trainer.use_vllm:
            return self._sample_vllm(prompt_ids, prompt_mask, role)
        generation_config, generation_kwargs = self.hf_generation[role]
        extra: dict[str, Any] = {}
        if cache is not None and cache.cache is not None:  # continue from the drafts
            extra[_CACHE_KWARG] = cache.cache
        elif cache is not None:  # keep the drafts' cache
            generation_config = copy.deepcopy(generation_config)
            generation_config.return_dict_in_generate = True
        with (
            profiling_context(trainer, f"transformers.generate.{role}"),
            unwrap_model_for_generation(
                model,
                trainer.accelerator,
                gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
                generation_kwargs=generation_kwargs,
                # re-enabled after generation with the user's settings (upstream's default drops them)
                gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
            ) as unwrapped_model,
            torch.no_grad(),
            FSDP.summon_full_params(trainer.model_wrapped, recurse=False)
            if trainer.is_fsdp_enabled
            else nullcontext(),
        ):
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
            cache.generated_mask = truncate_right(
                cache.generated_ids, trainer.eos_token_ids, trainer._tokenizer.pad_token_id
            )[1]
        return self._split_completions(output[:, prompt_ids.size(1) :])

    def _split_completions(self, completion_ids: torch.Tensor) -> list[Completion]:
        """Generated rows -> content tokens up to the first EOS, and whether an EOS was sampled at all."""
        eos_token_ids, pad_token_id = self.trainer.eos_token_ids, self.trainer._tokenizer.pad_token_id
        completion_ids, mask = truncate_right(completion_ids, eos_token_ids, pad_token_id)
        return [
            Completion.from_generated(ids[: sum(row_mask)], eos_token_ids)
            for ids, row_mask in zip(completion_ids.tolist(), mask.tolist())
        ]

    def _sample_vllm(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, role: str) -> list[Completion]:
        """vLLM sampling with n=1, from the prompts' token ids.

        Token ids, not text: the improver's next-turn prompt holds the draft exactly as sampled, which decoding and
        re-tokenizing does not always give back (and a rendered Llama 3 prompt tokenized again gets a second BOS).
        The weights are pushed with the parent's `_move_model_to_vllm` once per optimizer step, shared by the
        policy's and the improver's calls, and again after sleep mode (level 2 discards them after every call).
        """
        trainer = self.trainer
        sampling = self.vllm_sampling[role]
        prompts = [row[mask.bool()].tolist() for row, mask in zip(prompt_ids, prompt_mask)]  # without left padding
        sleeps = trainer.vllm_mode == "colocate" and trainer.args.vllm_enable_sleep_mode
        if trainer.state.global_step != trainer._last_loaded_step or self._vllm_weights_asleep:
            if sleeps:
                trainer.llm.wake_up(tags=["weights"])
            trainer._move_model_to_vllm()
            trainer._last_loaded_step = trainer.state.global_step
            self._vllm_weights_asleep = False
        if trainer.vllm_mode == "colocate":
            if sleeps:
                trainer.llm.wake_up(tags=["kv_cache"])
            requests = [{"prompt_token_ids": ids} for ids in prompts]
            outputs = trainer.llm.generate(requests, vllm_sampling_params(**sampling), use_tqdm=False)
            completion_ids = [list(output.outputs[0].token_ids) for output in outputs]
            if sleeps:
                trainer.llm.sleep(level=2)
                self._vllm_weights_asleep = True
        else:
            all_prompts = gather_object(prompts)
            if trainer.accelerator.is_main_process:
                # `VLLMClient.generate`'s own parameters by name; the rest as its `generation_kwargs`, as upstream
                named = {k: v for k, v in sampling.items() if k in _CLIENT_PARAMETERS}
                extra = {k: v for k, v in sampling.items() if k not in _CLIENT_PARAMETERS and k != "detokenize"}
                output = trainer.vllm_client.generate(prompts=all_prompts, **named, generation_kwargs=extra or None)
                completion_ids = output["completion_ids"]
            else:
                completion_ids = [None] * len(all_prompts)
            completion_ids = broadcast_object_list(completion_ids, from_process=0)
            start = trainer.accelerator.process_index * len(prompts)
            completion_ids = completion_ids[start : start + len(prompts)]
        # Shorter than max_tokens without an EOS: stopped by a stop token vLLM left out of the ids.
        return [
            Completion.from_generated(ids, trainer.eos_token_ids, stopped=len(ids) < sampling["max_tokens"])
            for ids in completion_ids
        ]
