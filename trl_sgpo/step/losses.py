"""The losses of a step: the improver's supervised objective on its targets, and DPO on the pairs, each on the
log-probabilities `scoring.Scorer` computes (the arithmetic is `method.objectives`)."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..method.improver import PLAUSIBILITY_STRATEGIES, improver_targets
from ..method.objectives import dpo_objective, improver_objective
from ..method.step_stats import StepStats, target_stats
from ..records import Completion, DraftBatch, ImproverPrompts, Padded, Scores
from .layout import PromptLayout
from .scoring import Scorer


@dataclass
class ImproverTerms:
    """The improver objective of a step: its loss, the scores its passes computed (a DPO step reuses them), the
    targets and which of them the filter kept."""

    loss: torch.Tensor
    scores: Scores
    targets: list[Completion]
    keep: list[bool]


def mean_token_logps(token_logps: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Each row's mean log-probability per scored token (0 for a row with none)."""
    return ((token_logps * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist()


ReferenceLogps = Callable[[DraftBatch, Padded], torch.Tensor]


class ImproverLoss:
    """The improver's targets toward the references, their scores under the improver prompts, and the supervised
    loss on them, plus the policy's SFT term on the references (`method.objectives.improver_objective`).

    Args:
        scorer: runs the forward passes.
        layout: pads the targets.
        settings: the `SGPOConfig` (the target strategy and filter: ``improver_target``, ``improver_alpha``,
            ``improver_drop_unchanged``, ``improver_filter_outliers``, ``improver_outlier_k``; and
            ``policy_sft_weight``, ``policy_sft_target``).
        reference_logps: the initial policy's (the DPO reference model's) per-token log-probabilities of a batch's
            rows, without gradients: ``keep_plausible`` weighs each draft against its reference with them.
    """

    def __init__(self, scorer: Scorer, layout: PromptLayout, settings: Any, reference_logps: ReferenceLogps):
        self.scorer = scorer
        self.layout = layout
        self.settings = settings
        self.reference_logps = reference_logps

    def plausibility(self, batch: DraftBatch) -> tuple[list[float], list[float]]:
        """The initial policy's mean token log-probabilities of the drafts and of the references (policy prompt)."""
        rows = self.layout.pad(batch.drafts + batch.references)
        with torch.no_grad():
            means = mean_token_logps(self.reference_logps(batch, rows), rows.mask)
        return means[: len(batch.drafts)], means[len(batch.drafts) :]

    def policy_sft_rows(self, batch: DraftBatch) -> Padded:
        """What the policy's SFT term trains on (``policy_sft_target``): the references, or the policy's own
        drafts, whose NLL (samples of the initial policy in Step 1) anchors the policy where it started instead of
        pulling it toward the references."""
        if self.settings.policy_sft_target == "draft":
            return self.layout.pad(batch.drafts)
        return batch.reference_tokens

    def __call__(
        self,
        model: nn.Module,
        batch: DraftBatch,
        prompts: ImproverPrompts,
        scale: float,
        stats: StepStats,
        pair: Padded | None = None,
    ) -> ImproverTerms:
        """The objective for ``batch``'s drafts under ``prompts``. ``pair`` (a DPO step: the rewrites, then the
        drafts): scored in the same passes where the next turn allows, for the DPO loss to take."""
        plausibility = None
        if self.settings.improver_target in PLAUSIBILITY_STRATEGIES:
            plausibility = self.plausibility(batch)
        targets, keep, sizes = improver_targets(batch.drafts, batch.references, self.settings, plausibility)
        target_stats(stats, sizes, keep)
        padded = self.layout.pad(targets)
        sft_rows = self.policy_sft_rows(batch)
        scores = self.scorer.improver_scores(model, batch, prompts, padded, pair, sft_rows)
        loss, values = improver_objective(
            scores.target,
            padded.mask,
            keep,
            scores.reference,
            sft_rows.mask,
            self.settings.policy_sft_weight,
            scale,
        )
        stats.update(values)
        return ImproverTerms(loss, scores, targets, keep)


class DPOLoss:
    """DPO on ``(chosen, drafts)`` under the policy prompt (`method.objectives.dpo_objective`), dropped pairs
    weighted 0.

    Its own forward pass (not batched with the template improver's rows, whose prompts are much longer: padding
    both to one width wasted most of the compute); the gradient graphs meet in the step's one backward. Where
    `Scorer.packs` allows, each prompt is one packed row ``[x | chosen | rejected]``, for the policy and the
    reference model alike.

    Args:
        scorer: runs the policy's forward passes.
        reference_logps: the reference model's per-token log-probabilities of a pair (``batch``, ``pair``), without
            gradients (the frozen reference model, or the adapter-disabled model under PEFT).
        beta: the DPO beta of the current step.
        loss_type: ``"sigmoid"`` (DPO) or ``"ipo"``.
        chosen_nll_weight: the weight of the chosen side's NLL term.
    """

    def __init__(
        self,
        scorer: Scorer,
        reference_logps: ReferenceLogps,
        beta: Callable[[], float],
        loss_type: str,
        chosen_nll_weight: float,
    ):
        self.scorer = scorer
        self.reference_logps = reference_logps
        self.beta = beta
        self.loss_type = loss_type
        self.chosen_nll_weight = chosen_nll_weight

    def __call__(
        self,
        model: nn.Module,
        batch: DraftBatch,
        pair: Padded,
        keep: list[bool],
        scale: float,
        stats: StepStats,
        scores: Scores | None = None,
        ref_logps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss of the pairs ``pair`` (the chosen sides, then the drafts); ``scores``: what the improver's
        passes already scored of them; ``ref_logps``: the reference model's, where a pair gate computed them."""
        token_logps = self.scorer.policy_pair_logps(model, batch, pair, scores)
        if ref_logps is None:
            with torch.no_grad():
                ref_logps = self.reference_logps(batch, pair)
        beta = self.beta()
        terms = dpo_objective(
            token_logps, ref_logps, pair.mask, keep, beta, self.loss_type, self.chosen_nll_weight, scale
        )
        stats.update(terms.stats)
        stats.add("beta", [beta])  # the same on every process, so its mean over processes is itself
        return terms.loss
