"""The improver's stage: its prompts for a batch's drafts, and its rewrites (on the drafts' KV cache where kept)."""

from contextlib import nullcontext
from dataclasses import dataclass

from torch import nn

from ..records import Completion, DraftBatch, ImproverPrompts, StageClock
from .drafts import SampleFn
from .layout import PromptLayout
from .sampling import generation_work
from .speculation import SpeculationStats


@dataclass
class Rewrites:
    """The improver's prompts for a batch and its rewrite of each draft; ``speculation``: what the speculated
    rewrite did (with ``improver_speculative_tokens``), else None."""

    prompts: ImproverPrompts
    completions: list[Completion]
    speculation: SpeculationStats | None = None


class Rewriter:
    """Rewrites a batch's drafts with the improver role.

    Args:
        layout: builds the improver's prompts.
        sample: the sampler (called late, so a sampler swapped on the trainer is the one used).
        speculate: speculate the rewrite from the draft (``improver_speculative_tokens > 0``).
    """

    def __init__(self, layout: PromptLayout, sample: SampleFn, speculate: bool = False):
        self.layout = layout
        self.sample = sample
        self.speculate = speculate

    def __call__(
        self, model: nn.Module, batch: DraftBatch, role: str = "improver", clock: StageClock | None = None
    ) -> Rewrites:
        """The rewrites of ``batch.drafts`` (``role``: ``"improver"``, or ``"improver_greedy"`` for readiness).

        Where the drafts' KV cache was kept (next turn, transformers), the rewrite continues from it, and the batch
        lets go of the cache (it is used up).
        """
        prompts = self.layout.improver_prompts(batch)
        speculation = SpeculationStats() if self.speculate else None
        # the drafts go to the sampler only to speculate from: a custom sampler without the keyword still works
        extra = {"drafts": batch.drafts, "speculation": speculation} if self.speculate else {}
        ids, mask, cached = prompts.ids, prompts.mask, 0
        if batch.draft_cache is not None and prompts.generation_ids is not None:  # continue the drafts' cache
            ids, mask = prompts.generation_ids, prompts.generation_mask
            cached = batch.draft_cache.cache.get_seq_length()  # tokens per row not fed again
            extra["cache"] = batch.draft_cache
        with clock.stage("generation") if clock is not None else nullcontext():
            completions = self.sample(model, ids, mask, role, **extra)
        batch.draft_cache = None
        if clock is not None:
            clock.count(**generation_work(ids, completions, cached))
        return Rewrites(prompts, completions, speculation)
