"""Both roles' vLLM sampling on TRL's own `VLLMGeneration` (`use_vllm=True`).

`trl.generation.vllm_generation.VLLMGeneration` is TRL's maintained vLLM back end (GRPO uses it): the colocated
engine or the server client, prompts as token ids, the weight sync (DeepSpeed ZeRO-3, FSDP1/FSDP2 and PEFT
merging included), and sleep mode, whose level 2 discards the weights after each call and re-pushes them before the
next. SGPO samples with two roles, so `VLLMRoles` sets each role's sampling settings on the engine before its call
(`VLLMGeneration` reads them from its attributes at every call); the weights are pushed once per optimizer step and
shared by the policy's and the improver's calls (in sleep mode `VLLMGeneration` pushes them again after each call's
level-2 sleep, as it must). The trainer keeps TRL's online DPO trainer from building its older engine of its own
(`SGPOTrainer.__init__`).
"""

from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from .sampling import improver_sampling


# The attributes `VLLMGeneration.generate` reads its sampling settings from (TRL 1.16), set per role.
ROLE_SETTINGS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_completion_length")


def role_settings(args: Any, eos_token_ids: list[int]) -> dict[str, dict[str, Any]]:
    """Each role's sampling settings in `VLLMGeneration`'s terms, from an `SGPOConfig`.

    ``generation_kwargs`` go to vLLM's `SamplingParams` (the server's ``generation_kwargs``) with the stop ids: the
    trainer's end-of-sequence ids, which hold the chat template's end-of-turn token even where the model's
    `generation_config` lacks it. ``"eval"`` and ``"improver_greedy"`` are greedy (temperature 0).
    """
    improver_temperature, improver_top_p, improver_tokens = improver_sampling(args)
    common = {
        "repetition_penalty": args.repetition_penalty,
        "top_k": args.top_k or 0,  # 0: no truncation, in vLLM and TRL's client
        "min_p": args.min_p or 0.0,
        "generation_kwargs": {"stop_token_ids": list(eos_token_ids), **(args.generation_kwargs or {})},
    }
    policy = {**common, "temperature": args.temperature, "top_p": args.top_p}
    improver = {**common, "temperature": improver_temperature, "top_p": improver_top_p}
    greedy = {**common, "temperature": 0.0, "top_p": 1.0}
    return {
        "policy": {**policy, "max_completion_length": args.max_new_tokens},
        "improver": {**improver, "max_completion_length": improver_tokens},
        "eval": {**greedy, "max_completion_length": args.max_new_tokens},
        "improver_greedy": {**greedy, "max_completion_length": improver_tokens},
    }


def build_vllm_generation(
    args: Any, model: Any, accelerator: Any, processing_class: Any, eos_token_ids: list[int]
) -> Any:
    """`VLLMGeneration` for ``model``, configured from its `SGPOConfig` (``args``) as GRPO configures it."""
    from trl.generation.vllm_generation import VLLMGeneration

    policy = role_settings(args, eos_token_ids)["policy"]
    return VLLMGeneration(
        model=model,
        accelerator=accelerator,
        processing_class=processing_class,
        mode=args.vllm_mode,
        structured_outputs_regex=args.vllm_structured_outputs_regex,
        server_base_url=args.vllm_server_base_url,
        server_host=args.vllm_server_host,
        server_port=args.vllm_server_port,
        server_timeout=args.vllm_server_timeout,
        group_port=args.vllm_group_port,
        tensor_parallel_size=args.vllm_tensor_parallel_size,
        gpu_memory_utilization=args.vllm_gpu_memory_utilization,
        max_num_seqs=args.per_device_train_batch_size * args.vllm_tensor_parallel_size,
        enable_sleep_mode=args.vllm_enable_sleep_mode,
        model_impl=args.vllm_model_impl,
        logprobs=None,  # SGPO scores every sequence itself
        **policy,
    )


class VLLMRoles:
    """Sample one completion per prompt for a role with one `VLLMGeneration`, one weight push per optimizer step.

    Args:
        generation: the `VLLMGeneration` (`build_vllm_generation`).
        args: the `SGPOConfig` (each role's sampling settings).
        eos_token_ids: the ids generation stops on.
        current_step: the run's optimizer step now (the weights are pushed again when it changes).
        profile: a context manager per named stage (TRL's `profiling_context`, bound to the trainer).
    """

    def __init__(
        self,
        generation: Any,
        args: Any,
        eos_token_ids: list[int],
        current_step: Callable[[], int],
        profile: Callable[[str], AbstractContextManager],
    ):
        self.generation = generation
        self.settings = role_settings(args, eos_token_ids)
        self.current_step = current_step
        self.profile = profile
        self.synced_at_step: int | None = None

    def __call__(self, prompts: list[list[int]], role: str) -> list[list[int]]:
        """The generated token ids for each prompt (token ids without padding), sampled as ``role``."""
        step = self.current_step()
        if step != self.synced_at_step:  # the weights changed since the last push
            with self.profile("vllm.sync_weights"):
                self.generation.sync_weights()
            self.synced_at_step = step
        with self._role(role), self.profile(f"vllm.generate.{role}"):
            _, completion_ids, _, _ = self.generation.generate(prompts, images=None, num_generations=1)
        return [list(ids) for ids in completion_ids]

    def max_tokens(self, role: str) -> int:
        return self.settings[role]["max_completion_length"]

    @contextmanager
    def _role(self, role: str):
        """The role's settings on the engine for one call, then the previous ones back."""
        generation, settings = self.generation, self.settings[role]
        before = {name: getattr(generation, name) for name in (*ROLE_SETTINGS, "generation_kwargs")}
        for name, value in settings.items():
            setattr(generation, name, value)
        try:
            yield
        finally:
            for name, value in before.items():
                setattr(generation, name, value)
