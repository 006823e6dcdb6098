"""SGPO's objectives as pure functions of log-probabilities (no model, no trainer), read and tested on their own.

The trainer scores the sequences (`scoring.Scorer`) and hands the per-token log-probabilities here:

- `preference_loss`: TRL's DPO (``sigmoid``) and IPO losses on the log-ratio margin
  ``logits = (log pi(y_w) - log pi(y_l)) - (log pi_ref(y_w) - log pi_ref(y_l))``:
  ``-log sigmoid(beta * logits)`` and ``(logits - 1 / (2 * beta)) ** 2``;
- `dpo_objective`: the DPO step's loss over ``[chosen; rejected]`` rows, dropped pairs weighted 0, plus the chosen
  side's NLL, with the statistics TRL logs for online DPO;
- `improver_objective`: the improver role's supervised loss on its targets, plus the policy's SFT loss on the
  references that keeps the policy role intact (`token_mean_nll` each).

Every loss is a *sum* over rows times the step's ``scale`` (``1 / prompts in the accumulated batch``), applied where
the trainer always applied it, so that the arithmetic (and the run) is the same to the last bit.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


LOSS_TYPES = ("sigmoid", "ipo")
POLICY_SFT_TARGETS = ("reference", "draft")  # what the policy's SFT term in improver updates trains on


def preference_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
) -> torch.Tensor:
    """Per-pair loss from summed sequence log-probabilities of the policy and of the reference model."""
    logits = (chosen_logps - rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * logits)
    if loss_type == "ipo":
        return (logits - 1 / (2 * beta)) ** 2
    raise ValueError(f"Unknown loss_type {loss_type!r}: choose one of {list(LOSS_TYPES)}.")


def token_mean_nll(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's negative log-likelihood per scored token (rows x tokens -> rows; an empty row gives 0)."""
    return -(token_logps * mask).sum(1) / mask.sum(1).clamp(min=1)


@dataclass
class DPOTerms:
    """The DPO step's loss (a sum over kept pairs, times the step's scale) and its per-pair statistics: kept pairs
    only, except ``objective/kl`` and ``objective/entropy``, which describe every draft as the parent logs them."""

    loss: torch.Tensor
    stats: dict[str, list[float]] = field(default_factory=dict)


def dpo_objective(
    token_logps: torch.Tensor,
    ref_token_logps: torch.Tensor,
    mask: torch.Tensor,
    keep: list[bool],
    beta: float,
    loss_type: str = "sigmoid",
    chosen_nll_weight: float = 0.0,
    scale: float = 1.0,
) -> DPOTerms:
    """DPO on ``[chosen; rejected]`` rows (``2n x tokens``, the policy's and the reference's per-token
    log-probabilities, ``mask`` marking the scored tokens), pair ``i`` being rows ``i`` and ``n + i``.

    ``loss = scale * sum_i keep_i * (preference_loss_i + chosen_nll_weight * NLL_i(chosen) per token)``.
    """
    batch_size = len(keep)
    token_logps = token_logps * mask
    ref_token_logps = ref_token_logps * mask
    chosen_logps, rejected_logps = token_logps.sum(1).split(batch_size)
    chosen_ref_logps, rejected_ref_logps = ref_token_logps.sum(1).split(batch_size)
    kept = torch.tensor(keep, dtype=chosen_logps.dtype, device=chosen_logps.device)
    losses = preference_loss(chosen_logps, rejected_logps, chosen_ref_logps, rejected_ref_logps, beta, loss_type)
    loss = (losses * kept).sum() * scale
    if chosen_nll_weight > 0:
        chosen_lengths = mask[:batch_size].sum(1).clamp(min=1)
        loss = loss + chosen_nll_weight * (-chosen_logps / chosen_lengths * kept).sum() * scale

    kept = kept.bool()
    chosen_rewards = beta * (chosen_logps - chosen_ref_logps).detach()
    rejected_rewards = beta * (rejected_logps - rejected_ref_logps).detach()
    # KL and entropy of the policy's own samples (the rejected side), as the parent estimates them.
    kl = (token_logps[batch_size:].detach() - ref_token_logps[batch_size:]).sum(1)
    stats = {
        "sgpo/dpo_loss": losses.detach()[kept].tolist(),
        "rewards/chosen": chosen_rewards[kept].tolist(),
        "rewards/rejected": rejected_rewards[kept].tolist(),
        "rewards/margins": (chosen_rewards - rejected_rewards)[kept].tolist(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards)[kept].float().tolist(),
        "logps/chosen": chosen_logps.detach()[kept].tolist(),
        "logps/rejected": rejected_logps.detach()[kept].tolist(),
        "objective/kl": kl.tolist(),
        "objective/entropy": (-rejected_logps.detach()).tolist(),
    }
    return DPOTerms(loss, stats)


def improver_objective(
    target_logps: torch.Tensor,
    target_mask: torch.Tensor,
    keep: list[bool],
    reference_logps: torch.Tensor | None = None,
    reference_mask: torch.Tensor | None = None,
    policy_sft_weight: float = 0.0,
    scale: float = 1.0,
) -> tuple[torch.Tensor, dict[str, list[float]]]:
    """``scale * (sum_i keep_i * NLL_i(target) + policy_sft_weight * sum_i NLL_i(reference))``, token means each,
    and its statistics (``sgpo/improver_loss`` over the kept targets, ``sgpo/policy_sft_loss``).

    The policy's SFT term (the references under the plain prompt) is mixed into improver updates so that training
    the improver role does not erase the policy role of the shared model.
    """
    nll = token_mean_nll(target_logps, target_mask)
    kept = torch.tensor(keep, dtype=nll.dtype, device=nll.device)
    stats = {"sgpo/improver_loss": nll.detach()[kept.bool()].tolist()}
    loss = (nll * kept).sum() * scale
    if policy_sft_weight > 0:
        sft_nll = token_mean_nll(reference_logps, reference_mask)
        stats["sgpo/policy_sft_loss"] = sft_nll.detach().tolist()
        loss = loss + policy_sft_weight * (sft_nll.sum() * scale)
    return loss, stats
