"""One timed optimizer step and where its time goes: SGPO's steps read from the trainer's own record
(`trl_sgpo.records.StepRecord`, through ``step_listeners``), upstream's by wrapping methods on the trainer instance."""

import gc
import inspect
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@dataclass
class StepProbe:
    """Accumulates, during one step, the time in generation and forward/backward, and the work done."""

    device: str
    times: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    work: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def reset(self) -> None:
        self.times = defaultdict(float)
        self.work = defaultdict(float)

    def timed(self, bucket: str, function: Callable, count: Callable | None = None) -> Callable:
        """``function`` timed into ``bucket``; ``count(work, arguments, result)`` gets its arguments by name."""
        signature = inspect.signature(function)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            synchronize(self.device)
            start = time.perf_counter()
            result = function(*args, **kwargs)
            synchronize(self.device)
            self.times[bucket] += time.perf_counter() - start
            if count is not None:
                count(self.work, signature.bind(*args, **kwargs).arguments, result)
            return result

        return wrapper

    def on_step_record(self, record) -> None:
        """SGPO: the step's own record (`trl_sgpo.records.StepRecord`) holds the time split and the work."""
        self.times["generation"] += record.seconds.get("generation", 0.0)
        self.times["forward_backward"] += record.seconds.get("forward", 0.0) + record.seconds.get("backward", 0.0)
        for name, value in record.work.items():
            self.work[name] += value


def _count_generate(work: dict[str, float], arguments: dict, result: tuple) -> None:
    """Upstream `_generate(model, prompts)` -> (prompt ids, prompt mask, completion ids, completion mask, vision)."""
    prompt_ids, _, _, completion_mask, _ = result
    work["generate_calls"] += 1
    work["generated_rows"] += prompt_ids.size(0)
    work["generation_prompt_tokens"] += prompt_ids.numel()
    work["generated_tokens"] += int(completion_mask.sum())


def _count_forward(work: dict[str, float], arguments: dict, result: torch.Tensor) -> None:
    """Upstream `_forward(model, prompt_ids, prompt_mask, completion_ids, completion_mask, ...)`: tokens in, and the
    padding among them."""
    prompt_ids, prompt_mask = arguments["prompt_ids"], arguments["prompt_mask"]
    completion_ids, completion_mask = arguments["completion_ids"], arguments["completion_mask"]
    tokens = prompt_ids.numel() + completion_ids.numel()
    real = int(prompt_mask.sum()) + int(completion_mask.sum())
    kind = "grad" if result.requires_grad else "no_grad"
    work[f"forward_calls_{kind}"] += 1
    work[f"forward_tokens_{kind}"] += tokens
    work[f"forward_padding_tokens_{kind}"] += tokens - real


def instrument(trainer, probe: StepProbe) -> None:
    """SGPO: read each step's record (its stages timed with the device synchronized). Upstream: wrap the generation,
    forward, backward and reward methods of this trainer instance with the probe's timers."""
    if hasattr(trainer, "step_listeners"):
        trainer.synchronize_stage_clock = True
        trainer.step_listeners.append(probe.on_step_record)
        return
    trainer._generate = probe.timed("generation", trainer._generate, _count_generate)
    trainer._forward = probe.timed("forward_backward", trainer._forward, _count_forward)
    trainer.accelerator.backward = probe.timed("forward_backward", trainer.accelerator.backward)
    trainer._calculate_rewards_from_functions = probe.timed("reward", trainer._calculate_rewards_from_functions)


def run_step(trainer, batch: dict[str, list], probe: StepProbe) -> dict[str, float]:
    """One optimizer step, as `Trainer` runs it; returns its time split (seconds) and the work counted."""
    model = trainer.model_wrapped
    device = probe.device
    gc.collect()
    probe.reset()
    synchronize(device)
    start = time.perf_counter()
    trainer.training_step(model, batch)
    synchronize(device)
    after_step = time.perf_counter()
    if trainer.args.max_grad_norm > 0:
        trainer.accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
    trainer.optimizer.step()
    model.zero_grad()
    synchronize(device)
    end = time.perf_counter()
    training_step = after_step - start
    generation = probe.times["generation"]
    forward_backward = probe.times["forward_backward"]
    reward = probe.times["reward"]
    return {
        "step": end - start,
        "training_step": training_step,
        "generation": generation,
        "forward_backward": forward_backward,
        "reward": reward,
        "optimizer": end - after_step,
        "rest": training_step - generation - forward_backward - reward,
        **{f"work/{key}": value for key, value in probe.work.items()},
    }
