"""The first stage of every step: the policy's drafts for a micro-batch of rows, with the tokenized references."""

from collections.abc import Callable
from contextlib import nullcontext

from torch import nn

from ..data.rows import reference_text
from ..records import Completion, DraftBatch, StageClock
from .layout import PromptLayout
from .sampling import DraftCache, generation_work


# The sampler seam: `sampling.Sampler.__call__`'s signature (tests hand in stand-ins).
SampleFn = Callable[..., list[Completion]]


class DraftStage:
    """Samples the policy's drafts for the rows' prompts and tokenizes their SFT references (`DraftBatch`).

    Args:
        layout: renders and tokenizes the prompts and references.
        sample: the sampler (`sampling.Sampler`, or a stand-in with its signature); called late, so a sampler
            swapped on the trainer is the one used.
    """

    def __init__(self, layout: PromptLayout, sample: SampleFn):
        self.layout = layout
        self.sample = sample

    def __call__(
        self,
        model: nn.Module,
        rows: dict[str, list],
        keep_cache: bool = False,
        role: str = "policy",
        clock: StageClock | None = None,
    ) -> DraftBatch:
        """The drafts of ``rows`` (columns ``prompt`` and ``completion``, the SFT reference).

        ``keep_cache``: keep the drafts' KV cache in the batch, for the improver's next turn to continue from.
        ``role``: the sampler's role for the drafts (``"eval"``: greedy, for Step 1's readiness).
        ``clock``: times the generation and counts its work.
        """
        prompts = rows["prompt"]
        policy_texts = self.layout.policy_prompt_texts(prompts)
        prompt_ids, prompt_mask = self.layout.tokenize_prompts(policy_texts)
        draft_cache = DraftCache() if keep_cache else None
        with clock.stage("generation") if clock is not None else nullcontext():
            drafts = self.sample(model, prompt_ids, prompt_mask, role, cache=draft_cache)
        if clock is not None:
            clock.count(**generation_work(prompt_ids, drafts))
        reference_texts = [reference_text(completion) for completion in rows["completion"]]
        references = [self.layout.reference_completion(text) for text in reference_texts]
        return DraftBatch(
            prompts=prompts,
            prompt_texts=policy_texts,
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            drafts=drafts,
            reference_texts=reference_texts,
            references=references,
            reference_tokens=self.layout.pad(references),
            rows=rows,
            draft_cache=draft_cache if draft_cache is not None and draft_cache.cache is not None else None,
        )
