"""Score a step's rows with the model whole and sharded by torch's FSDP2 (`fully_shard`) on 2 CPU processes (gloo).

Usage, from the repository root: torchrun --nproc_per_node 2 -m tests.fsdp2_run OUTPUT_DIR (a module of the tests
package, for its helpers); run by tests/test_fsdp2.py. Both ranks build the same toy trainer and batch (drafts that
ended and drafts cut), then score it with `Scorer.improver_scores` twice per path, packed and separate passes,
selective logits on: once with the whole model, once with a copy whose layers and root are sharded over the 2
processes, and back-propagate the target scores through both. Each rank writes, per path, the largest differences of
the scores and of the gradients (the sharded ones gathered with `full_tensor`).
"""

import copy
import json
import os
import sys
import tempfile
from pathlib import Path


os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402

from tests.test_next_turn import _batch, _mixed_trainer, _targets  # noqa: E402


def _difference(a, b) -> float:
    if a is None or b is None:
        return 0.0 if a is None and b is None else float("inf")
    return float((a - b).abs().max())


def main(output_dir: str) -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        # use_cpu: the process group is gloo, set up by accelerate from torchrun's environment
        trainer, _ = _mixed_trainer(Path(scratch), use_cpu=True, policy_sft_weight=0.5)
    rank = dist.get_rank()
    batch = _batch(trainer)  # seeded: the same drafts on both ranks
    prompts, targets = trainer.layout.improver_prompts(batch), _targets(trainer, batch)
    whole = trainer.model
    sharded = copy.deepcopy(whole)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in sharded.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    result = {"world_size": dist.get_world_size(), "sharded_class": type(sharded).__name__}
    for packed in (True, False):
        trainer.scorer.pack_shared_prefix = packed
        runs = []
        for model in (whole, sharded):
            model.zero_grad(set_to_none=True)
            padded, pair = trainer.layout.pad(targets), trainer.layout.pad(targets + batch.drafts)
            scores = trainer.scorer.improver_scores(model, batch, prompts, padded, pair)
            (scores.target.sum() + scores.reference.sum()).backward()
            gradients = {
                name: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).detach().clone()
                for name, p in model.named_parameters()
            }
            runs.append((scores, gradients))
        (whole_scores, whole_grads), (sharded_scores, sharded_grads) = runs
        result["packed" if packed else "separate"] = {
            "used_packing": trainer.scorer.packs(whole, 0),
            "selective_logits": trainer.scorer.selects_logits(sharded),
            "scores": {
                field: _difference(getattr(whole_scores, field), getattr(sharded_scores, field))
                for field in ("target", "rejected", "chosen", "reference")
            },
            "scored_fields": [
                f for f in ("target", "rejected", "chosen", "reference") if getattr(whole_scores, f) is not None
            ],
            "score_scale": max(
                float(getattr(whole_scores, f).abs().max())
                for f in ("target", "rejected", "chosen", "reference")
                if getattr(whole_scores, f) is not None
            ),
            "gradients": max(_difference(whole_grads[n], sharded_grads[n]) for n in whole_grads),
            "gradient_scale": max(float(g.abs().max()) for g in whole_grads.values()),
        }
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
