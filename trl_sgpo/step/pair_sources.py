"""The chosen side of a DPO pair, one function per pair source (`SGPOConfig.pair_source`), chosen once.

``sgpo`` (the paper): the improver's rewrite of the draft. ``spin`` (the SPIN baseline): the SFT reference. ``edit``
(an ablation of ours): the draft moved a fraction ``improver_alpha`` of its token edits toward the reference, by
arithmetic. ``self_sharpen`` (a control of ours): the policy's own greedy answer; what any method gains by sharpening
the policy toward its mode, which an improver must beat to be credited. The rejected side is always the draft.
"""

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

from torch import nn

from ..method.improver import edit_toward
from ..records import Completion, DraftBatch, StageClock
from .drafts import SampleFn
from .rewrite import Rewriter, Rewrites


@dataclass
class ChosenSide:
    """A batch's chosen sides, and the improver's prompts and rewrites where the improver wrote them."""

    completions: list[Completion]
    rewrites: Rewrites | None = None


ChooseFn = Callable[[nn.Module, DraftBatch, StageClock | None], ChosenSide]


def chosen_by_improver(rewrite: Rewriter) -> ChooseFn:
    """``sgpo``: chosen = the improver's rewrite of each draft."""

    def choose(model: nn.Module, batch: DraftBatch, clock: StageClock | None = None) -> ChosenSide:
        rewrites = rewrite(model, batch, clock=clock)
        return ChosenSide(rewrites.completions, rewrites)

    return choose


def chosen_by_reference() -> ChooseFn:
    """``spin``: chosen = the SFT reference."""

    def choose(model: nn.Module, batch: DraftBatch, clock: StageClock | None = None) -> ChosenSide:
        return ChosenSide(batch.references)

    return choose


def chosen_by_edit(alpha: float) -> ChooseFn:
    """``edit``: chosen = the draft with the first ``alpha`` of its token edits toward the reference applied."""

    def choose(model: nn.Module, batch: DraftBatch, clock: StageClock | None = None) -> ChosenSide:
        return ChosenSide([edit_toward(d, r, alpha) for d, r in zip(batch.drafts, batch.references)])

    return choose


def chosen_by_greedy_answer(sample: SampleFn) -> ChooseFn:
    """``self_sharpen``: chosen = the policy's own greedy answer to the prompt."""

    def choose(model: nn.Module, batch: DraftBatch, clock: StageClock | None = None) -> ChosenSide:
        with clock.stage("generation") if clock is not None else nullcontext():
            greedy = sample(model, batch.prompt_ids, batch.prompt_mask, "eval")
        return ChosenSide(greedy)

    return choose


def pair_source(name: str, rewrite: Rewriter, alpha: float, sample: SampleFn) -> ChooseFn:
    """The chosen side's function of the pair source ``name`` (one of `method.pairs.PAIR_SOURCES`)."""
    sources = {
        "sgpo": lambda: chosen_by_improver(rewrite),
        "spin": chosen_by_reference,
        "edit": lambda: chosen_by_edit(alpha),
        "self_sharpen": lambda: chosen_by_greedy_answer(sample),
    }
    if name not in sources:
        raise ValueError(f"Unknown pair_source {name!r}: choose one of {sorted(sources)}.")
    return sources[name]()
