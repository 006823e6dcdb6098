"""Train a few SGPO steps with plain SGD and save what the trainer determined; run by test_distributed.py and
test_deepspeed.py.

Usage: python tests/distributed_run.py OUTPUT_DIR PER_DEVICE_BATCH_SIZE [DTYPE] (directly, or under torchrun or
accelerate for several processes). DTYPE is float64 (the default) or float32: DeepSpeed ZeRO-3 accepts half, bfloat16
and float32 parameters only. Generation is greedy so that runs with different process counts sample the same responses.

Saved (by rank 0): ``gradients.pt``, the gradient of every step's global batch after the all-reduce and before the
optimizer; ``weights.pt``, the initial and final weights; ``summary.json``, the logged metrics. Why float64 and SGD
(not Adam): see tests/test_distributed.py.
"""

import contextlib
import json
import os
import sys


os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding  # noqa: E402

from trl_sgpo import SGPOConfig, SGPOTrainer  # noqa: E402
from trl_sgpo.toy import build_char_tokenizer, build_tiny_model  # noqa: E402


WORDS = ["abc", "hello", "world", "qwerty", "zyx", "mnop", "abcd", "xyz"]


class GradientRecorder(TrainerCallback):
    """Keeps each step's gradient as the optimizer will see it (under DDP: already averaged over processes)."""

    def __init__(self):
        self.gradients: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        model = getattr(model, "module", model)  # the DDP wrapper's parameters are the module's
        self.gradients.append(
            {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
        )


class Float64RotaryEmbedding(LlamaRotaryEmbedding):
    """Llama's rotary embedding with its angles in float64.

    transformers computes ``position * inv_freq`` and its cos/sin in float32 whatever the model's dtype. Left padding
    shifts a row's absolute positions by the padding of its batch, which differs between 1 and 2 processes by design;
    RoPE is shift-invariant only in exact arithmetic, so float32 angles alone move the runs apart by ~1e-7 relative.
    """

    def forward(self, x, position_ids):
        freqs = position_ids[..., None].double() * self.inv_freq.to(device=x.device, dtype=torch.float64)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def gathered(model: torch.nn.Module, deepspeed_enabled: bool):
    """The full parameters for the duration (ZeRO-3 partitions them; a no-op otherwise)."""
    if not deepspeed_enabled:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()))


def main(
    output_dir: str, per_device_batch_size: int, dtype: torch.dtype = torch.float64, learning_rate: float = 1e-3
) -> None:
    torch.set_num_threads(1)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0).to(dtype)
    with torch.no_grad():  # larger weights: greedy outputs then depend on the prompt, so pairs differ
        for parameter in model.parameters():
            parameter.mul_(8.0)
    model.model.rotary_emb.__class__ = Float64RotaryEmbedding
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": f"reverse {w}"}],
                "completion": [{"role": "assistant", "content": w[::-1]}],
            }
            for w in WORDS
        ]
    )
    config = SGPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=per_device_batch_size,
        max_steps=4,
        improver_warmup_steps=0,  # alternate from the first step, so both phases run under DDP in 4 steps
        improver_steps=1,  # (the default format, "auto", is the next turn here: packed scoring under DDP too)
        # The outlier filter acts per micro-batch (documented): 2 rows per process are never filtered, 4 in one
        # process can be, so it would make the two runs differ by design rather than by a bug.
        improver_filter_outliers=False,
        # A pair or target decided by comparing two log-probabilities can flip between the runs at a near tie (the
        # runs differ in rounding by design): the gate and keep_plausible targets are pinned off here; what this run
        # tests is the distribution of the step, and they are tested on their own.
        pair_gate="none",
        improver_target="reference",
        logging_steps=1,
        optim="sgd",  # an update proportional to the gradient: weights stay as close as the gradients are
        learning_rate=learning_rate,
        max_grad_norm=0.0,  # no clipping: a gradient twice too large must show in the weights as well
        max_new_tokens=6,
        improver_template="{prompt}\ndraft: {response}\nfix:",
        generation_kwargs={"do_sample": False, "forced_eos_token_id": tokenizer.eos_token_id},
        improver_temperature=0.0,
        report_to="none",
        save_strategy="no",
        seed=0,
        bf16=False,
        ddp_find_unused_parameters=False,
        use_cpu=True,  # torchrun on a CPU machine: gloo, one process per worker
    )
    recorder = GradientRecorder()
    trainer = SGPOTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[recorder]
    )
    trainer.train()
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    with gathered(unwrapped, trainer.is_deepspeed_enabled):  # every rank takes part in ZeRO-3's gather
        final = {name: p.detach().cpu().clone() for name, p in unwrapped.named_parameters()}
    if trainer.is_world_process_zero():
        torch.save({"initial": initial, "final": final}, os.path.join(output_dir, "weights.pt"))
        torch.save(recorder.gradients, os.path.join(output_dir, "gradients.pt"))
        logs = [log for log in trainer.state.log_history if "loss" in log]
        plugin = trainer.accelerator.state.deepspeed_plugin
        summary = {
            "num_processes": trainer.accelerator.num_processes,
            "zero_stage": plugin.zero_stage if plugin is not None else None,
            "partitioned": any(hasattr(p, "ds_id") and p.numel() == 0 for p in unwrapped.parameters()),
            "logs": logs,
        }
        with open(os.path.join(output_dir, "summary.json"), "w") as handle:
            json.dump(summary, handle)
    # Leave together and tear the process group down explicitly: a gloo group left to interpreter exit can abort a
    # rank ("terminate called without an active exception") before rank 0 has written its files.
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    # Exit here, before the locals are freed: freeing the DDP reducer destroys its gloo group, whose destructor joins
    # a gloo thread that waits for the GIL the freeing thread holds (seen with gdb on a rank that never exited).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    dtype = getattr(torch, sys.argv[3]) if len(sys.argv) > 3 else torch.float64
    main(sys.argv[1], int(sys.argv[2]), dtype, float(sys.argv[4]) if len(sys.argv) > 4 else 1e-3)
