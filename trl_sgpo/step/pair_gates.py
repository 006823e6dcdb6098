"""Reward-free pair gates: drop the DPO pairs that the model's own evidence does not support (`SGPOConfig.pair_gate`).

No reward or judge is involved; each gate asks the model a question about the pair ``(chosen = y', rejected = y)``:

- ``reference_margin``: does the initial policy (the DPO reference model) find the rewrite more plausible per token
  than the draft, by more than ``pair_gate_margin``? Free: the DPO loss needs the reference's log-probabilities of
  the pair anyway, and takes them from here.
- ``improver_keep``: does the improver prefer its rewrite to keeping the draft, per token, by more than
  ``pair_gate_margin``? One forward pass of the improver prompts with both sides as the answer, without gradients.
- ``round_trip``: does the improver leave its own rewrite unchanged when asked to improve it (greedy)? One more
  generation.

A pair the filter already dropped (identical, empty, cut off) stays dropped; the gate's own drops are logged as
``sgpo/pairs_gated`` (the share of the step's pairs it dropped).
"""

from dataclasses import replace

import torch
from torch import nn

from ..records import Completion, DraftBatch, ImproverPrompts, Padded
from .losses import ReferenceLogps, mean_token_logps
from .rewrite import Rewriter
from .scoring import Scorer


def margins(token_logps: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Per pair, the chosen side's mean token log-probability minus the rejected side's (rows: chosen, then
    rejected)."""
    means = mean_token_logps(token_logps, mask)
    size = len(means) // 2
    return [chosen - rejected for chosen, rejected in zip(means[:size], means[size:])]


def improver_keep_margins(scorer: Scorer, model: nn.Module, prompts: ImproverPrompts, pair: Padded) -> list[float]:
    """Per pair, the improver's mean token log-probability of its rewrite minus that of the draft as its answer,
    both under the improver's prompt (``pair``: the rewrites, then the drafts)."""
    with torch.no_grad():
        logps = scorer.forward(model, prompts.ids.repeat(2, 1), prompts.mask.repeat(2, 1), pair.ids, pair.mask)
    return margins(logps, pair.mask)


def round_trip_stable(
    rewrite: Rewriter, model: nn.Module, batch: DraftBatch, rewrites: list[Completion]
) -> list[bool]:
    """Per pair, whether the improver's greedy rewrite of its own rewrite is that rewrite again."""
    again = rewrite(model, replace(batch, drafts=rewrites, draft_cache=None), role="improver_greedy").completions
    return [second.token_ids == first.token_ids for first, second in zip(rewrites, again)]


class PairGate:
    """The gate ``name`` (one of `method.pairs.PAIR_GATES`; ``"none"`` passes every pair).

    Args:
        name: the gate.
        margin: the least margin a pair must show (``reference_margin``, ``improver_keep``).
        scorer: the improver's forward pass (``improver_keep``).
        rewrite: the improver's stage (``round_trip``).
        reference_logps: the reference model's log-probabilities of a pair (``reference_margin``).
    """

    def __init__(self, name: str, margin: float, scorer: Scorer, rewrite: Rewriter, reference_logps: ReferenceLogps):
        self.name, self.margin = name, margin
        self.scorer, self.rewrite, self.reference_logps = scorer, rewrite, reference_logps

    def __call__(
        self,
        model: nn.Module,
        batch: DraftBatch,
        prompts: ImproverPrompts | None,
        chosen: list[Completion],
        pair: Padded,
    ) -> tuple[list[bool], torch.Tensor | None]:
        """Which pairs pass, and the reference model's log-probabilities of ``pair`` where the gate computed them
        (for the DPO loss to reuse), else None."""
        if self.name == "reference_margin":
            with torch.no_grad():
                ref_logps = self.reference_logps(batch, pair)
            return [margin > self.margin for margin in margins(ref_logps, pair.mask)], ref_logps
        if self.name == "improver_keep" and prompts is not None:
            return [margin > self.margin for margin in improver_keep_margins(self.scorer, model, prompts, pair)], None
        if self.name == "round_trip" and prompts is not None:
            return round_trip_stable(self.rewrite, model, batch, chosen), None
        return [True] * len(chosen), None
