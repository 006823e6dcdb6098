"""The preference loss of a DPO step, as a pure function of sequence log-probabilities (no model, no trainer).

TRL's `OnlineDPOTrainer` writes its loss inline in `training_step`; SGPO keeps it here, where it is read and tested
on its own. Both losses are TRL's, on the log-ratio margin
``logits = (log pi(y_w) - log pi(y_l)) - (log pi_ref(y_w) - log pi_ref(y_l))``:

- ``sigmoid`` (DPO): ``-log sigmoid(beta * logits)``;
- ``ipo`` (IPO): ``(logits - 1 / (2 * beta)) ** 2``.
"""

import torch
import torch.nn.functional as F


LOSS_TYPES = ("sigmoid", "ipo")


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
