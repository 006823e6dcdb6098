"""The records a step passes forward, and the public record of what a step did.

A step flows one way: the drafts' stage makes a `DraftBatch` (prompts, drafts, references, as token ids), the
improver's stage adds `ImproverPrompts` and the rewrites, scoring returns `Scores`, the losses read them, and the
trainer closes the step with a `StepRecord`: what was sampled, rewritten, kept or dropped and why, the losses and
statistics, and how long each stage took. Sample tables, the health signal and the benchmarks read `StepRecord`s
(`SGPOTrainer.step_listeners`), never the trainer's internals.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import torch


@dataclass
class Completion:
    """A sampled (or reference) completion: its content tokens (no EOS, no padding) and whether it ended with EOS.

    ``end_token`` is the EOS id that was sampled (a model may have several, e.g. Qwen's ``<|im_end|>`` and
    ``<|endoftext|>``); unset for references and targets. A finished completion is *scored* as its content followed by
    the chat template's end-of-turn token (`scored_tokens`), whichever EOS was sampled: every row then reads as the
    template renders the conversation, in the policy's passes and inside the improver's next turn alike.
    """

    token_ids: list[int]
    ended: bool
    end_token: int | None = None

    # The end-of-sequence rules, in one place: how a generated row becomes a completion, and what is scored of it.

    @classmethod
    def from_generated(cls, ids: Sequence[int], eos_token_ids: Sequence[int], stopped: bool = False) -> "Completion":
        """A generated row (up to its first EOS, no padding): the content, whether it ended (an EOS was sampled, or
        ``stopped``: the engine stopped at a stop token it left out of the ids), and the EOS that was sampled."""
        ends_with_eos = bool(ids) and ids[-1] in eos_token_ids
        content = list(ids[:-1]) if ends_with_eos else list(ids)
        return cls(content, ends_with_eos or stopped, ids[-1] if ends_with_eos else None)

    def scored_tokens(self, end_of_turn: int) -> list[int]:
        """The tokens a completion is scored on: its content, then ``end_of_turn`` if it ended (the template's
        end-of-turn token, see `improver.end_of_turn_token`). A cut completion has no end token."""
        if not self.ended:
            return list(self.token_ids)
        return [*self.token_ids, end_of_turn]

    def ended_off_turn(self, end_of_turn: int) -> bool:
        """Whether it ended on an EOS id other than the end-of-turn token (then its generated tokens, and the KV
        cache built on them, differ from the conversation as the template renders it)."""
        return self.ended and self.end_token is not None and self.end_token != end_of_turn


@dataclass
class ImproverPrompts:
    """The improver's prompts: left-padded ids and mask; next-turn extras where they apply.

    ``rejected_lengths`` / ``after_lengths`` (next turn): tokens of each draft (with its EOS) inside the prompt, and
    of the new turn after it. ``generation_ids`` / ``generation_mask``: the layout that continues the drafts' cache.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    rejected_lengths: list[int] | None = None
    after_lengths: list[int] | None = None
    generation_ids: torch.Tensor | None = None
    generation_mask: torch.Tensor | None = None

    @property
    def next_turn(self) -> bool:
        """Whether these are next-turn prompts (the policy's conversation continued, each draft inside its row)."""
        return self.rejected_lengths is not None


@dataclass
class Padded:
    """Completions as they are scored: each row's tokens (content, then the end-of-turn token if it ended:
    `Completion.scored_tokens`) and the same rows right-padded as ids and mask (at least one column). Built once per
    side (`PromptLayout.pad`), read by every pass that scores it, packed or not."""

    tokens: list[list[int]]
    ids: torch.Tensor
    mask: torch.Tensor


@dataclass
class DraftBatch:
    """One micro-batch as both phases see it: prompts (raw and tokenized), the policy's drafts, the references, and
    (next turn) the drafts' KV cache for the rewrite to continue from."""

    prompts: list
    prompt_texts: list[str]  # the policy prompts as rendered (chat template)
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    drafts: list[Completion]
    reference_texts: list[str]
    references: list[Completion]
    reference_tokens: Padded  # the references as scored (the policy's SFT term)
    rows: dict[str, list]  # the micro-batch's columns as the data loader gave them
    draft_cache: Any = None  # a filled `step.sampling.DraftCache`, or None


@dataclass
class Scores:
    """Per-token log-probabilities of a step's sides, each right-padded like its `Padded` rows (zeros on padding):
    the drafts (DPO rejected), the improver's targets, the rewrites (DPO chosen), the references (policy SFT)."""

    rejected: torch.Tensor | None = None
    target: torch.Tensor | None = None
    chosen: torch.Tensor | None = None
    reference: torch.Tensor | None = None


@dataclass
class StepRecord:
    """What one micro-step did, on this process: the public record a step leaves behind.

    ``phase``: ``"improver"`` or ``"dpo"``. ``rows``: the micro-batch's columns as the data loader gave them (extra
    columns included, e.g. a benchmark's gold answers). ``drafts``: the policy's samples. ``rewrites``: the improver's
    (DPO steps of the ``sgpo`` pair source). ``chosen``: the DPO chosen sides (the rewrites, the references with
    ``spin``, the edits with ``edit``). ``pair_verdicts``: per pair, ``"kept"`` or why it was dropped.
    ``targets`` / ``target_kept``: the improver's training targets and which the filter kept (improver steps, and DPO
    steps with ``improver_loss_weight > 0``). ``stats``: the step's statistics reduced over processes (the logged
    values). ``seconds``: seconds in ``generation`` (the sampler, both roles), ``forward`` (every scoring pass, policy
    and reference) and ``backward`` (see `StageClock` for the device's clock). ``work``: what they did, counted
    (generation calls, rows, prompt and generated tokens; forward calls and tokens with and without gradients, and how
    many of them were padding).
    """

    step: int
    phase: str
    rows: dict[str, list]
    drafts: list[Completion]
    reference_texts: list[str]
    rewrites: list[Completion] | None = None
    chosen: list[Completion] | None = None
    pair_verdicts: list[str] | None = None
    targets: list[Completion] | None = None
    target_kept: list[bool] | None = None
    loss: float = float("nan")
    stats: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    work: dict[str, float] = field(default_factory=dict)


class StageClock:
    """Times a step's stages into a dict of seconds and counts their work, for the step's `StepRecord`.

    ``synchronize`` (e.g. `torch.cuda.synchronize`) is called before and after each stage, so that the seconds are
    the device's; None (the default in training, and on the CPU) times the host only. Counts may be tensors (a mask's
    sum): they are read once, in `work`, not at every pass.
    """

    def __init__(self, synchronize: Any = None):
        self.synchronize = synchronize
        self.seconds: dict[str, float] = {}
        self._work: dict[str, Any] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.synchronize is not None:
            self.synchronize()
        start = perf_counter()
        try:
            yield
        finally:
            if self.synchronize is not None:
                self.synchronize()
            self.seconds[name] = self.seconds.get(name, 0.0) + perf_counter() - start

    def count(self, **amounts: Any) -> None:
        for name, amount in amounts.items():
            self._work[name] = self._work.get(name, 0) + amount

    @property
    def work(self) -> dict[str, float]:
        return {name: float(value) for name, value in self._work.items()}
