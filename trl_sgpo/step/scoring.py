"""Scoring: per-token log-probabilities of completions under a prompt, as cheaply as the model allows.

`Scorer` runs every forward pass a step scores: separate passes (`forward`), one packed row per prompt whose
continuations share the prompt (`pack`, `packed_forward`, `pair_logps`, `packed_scores`), and the LM head and
log-softmax only at the scored positions (`token_logps`, selective logits), each falling back to the plain path
where the model does not allow it. It times and counts its passes into the step's `StageClock` (``clock``).
"""

import inspect
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import logging

from ..records import DraftBatch, ImproverPrompts, Padded, Scores, StageClock
from .gathered_log_softmax import gathered_log_softmax


logger = logging.get_logger(__name__)


class Scorer:
    """The forward passes of a step. Tests may replace a method on the instance (``trainer.scorer.forward = ...``):
    the methods call each other through ``self``.

    Args:
        max_length: the longest scored sequence; longer ones lose prompt tokens from the left (as TRL does).
        pad_token_id: the padding id of packed rows.
        device: where the tensors go.
        unwrap: the model under its distributed wrappers (`accelerate.Accelerator.unwrap_model`).
        policy_sft_weight: whether (``> 0``) the improver's passes also score the references under the policy
            prompts (the policy's SFT term).
        select_logits: run the LM head and log-softmax only at the scored positions, where the model allows
            (False: at every position from the first scored one on; the same log-probabilities).
        pack_shared_prefix: score every continuation of a prompt in one packed row, where `packable` says it is
            exact (False: separate passes; the same log-probabilities).
    """

    def __init__(
        self,
        max_length: int,
        pad_token_id: int,
        device: torch.device,
        unwrap: Callable[[nn.Module], nn.Module],
        policy_sft_weight: float = 0.0,
        select_logits: bool = True,
        pack_shared_prefix: bool = True,
    ):
        self.max_length = max_length
        self.pad_token_id = pad_token_id
        self.device = device
        self.unwrap = unwrap
        self.policy_sft_weight = policy_sft_weight
        self.select_logits = select_logits
        self.pack_shared_prefix = pack_shared_prefix
        self._rotary_models: dict[int, bool] = {}  # id of a model -> whether it has rotary position embeddings
        self._said_truncation = False  # each "said once" warning, once per scorer
        self._said_full_logits = False
        self.clock: StageClock | None = None  # the current step's: times the passes and counts what they forward

    def _timed(self) -> AbstractContextManager:
        return self.clock.stage("forward") if self.clock is not None else nullcontext()

    def _count(self, kind: str, tokens: int, real: torch.Tensor) -> None:
        """A pass's work: ``kind`` ``grad`` or ``no_grad``, its tokens, and how many of them were real."""
        if self.clock is not None:
            self.clock.count(
                **{
                    f"forward_calls_{kind}": 1,
                    f"forward_tokens_{kind}": tokens,
                    f"forward_padding_tokens_{kind}": tokens - real,
                }
            )

    def forward(
        self,
        model,
        prompt_ids,
        prompt_mask,
        completion_ids,
        completion_mask,
        prompt_tail: int = 0,
        tail_mask: torch.Tensor | None = None,
    ):
        """Per-token log-probabilities of the completion tokens, like the parent's, but cheaper.

        The parent computes logits and a full log-softmax for every prompt position too. The improver's prompts are
        long (template, prompt and draft), so with a real vocabulary that is most of the memory of a step: the LM head
        and the log-softmax run at the scored positions only (`token_logps`). Padding is not scored (zeros there).
        Like the parent, sequences longer than `max_length` lose prompt tokens from the left.

        ``prompt_tail > 0`` also scores the last ``prompt_tail`` prompt tokens (their log-probabilities come first in
        the result): the fused next-turn pass reads the draft's log-probabilities there. ``tail_mask`` (rows x
        ``prompt_tail``, default: the prompt's mask there) says which of them to score; the others read zero.
        """
        with self._timed():
            input_ids = torch.cat((prompt_ids, completion_ids), dim=1)
            attention_mask = torch.cat((prompt_mask, completion_mask), dim=1)
            start = prompt_ids.size(1) - prompt_tail  # column of the first scored token
            if tail_mask is None:
                tail_mask = prompt_mask[:, start:]
            scored = torch.cat((tail_mask.bool(), completion_mask.bool()), dim=1)
            rows, offsets = scored.nonzero(as_tuple=True)
            columns = start + offsets  # each token is predicted at the column before it
            excess = max(input_ids.size(1) - self.max_length, 0)
            if excess:
                input_ids, attention_mask, columns = self.fit_to_max_length(
                    input_ids, attention_mask, completion_mask, rows, columns, excess
                )
            logps = self.token_logps(
                model,
                {"input_ids": input_ids, "attention_mask": attention_mask},
                rows,
                columns - 1,
                input_ids[rows, columns],
            )
            real = prompt_mask.sum() + completion_mask.sum()
            self._count(
                "grad" if logps.requires_grad else "no_grad", prompt_ids.numel() + completion_ids.numel(), real
            )
            return torch.zeros(scored.shape, dtype=logps.dtype, device=logps.device).index_put((rows, offsets), logps)

    def fit_to_max_length(self, input_ids, attention_mask, completion_mask, rows, columns, excess: int):
        """The padded rows cut to `max_length` columns, losing real tokens only from rows longer than that.

        The prompt block is left-padded to its widest row and the completion block right-padded to its widest, so
        the block can be over `max_length` when no row is (a long prompt in one row, a long reference in another).
        Each row's tokens are first moved right by its completion's padding (rows end on their last token, all the
        padding on the left); then ``excess`` columns are cut from the left, as TRL does, which is padding in every
        row that fits. A row still too long loses prompt tokens from the left, which is said once.
        """
        padding = completion_mask.size(1) - completion_mask.sum(dim=1)
        width = input_ids.size(1)
        source = (torch.arange(width, device=input_ids.device) - padding[:, None]) % width
        input_ids, attention_mask = input_ids.gather(1, source), attention_mask.gather(1, source)
        columns = columns + padding[rows]
        lengths = attention_mask.sum(dim=1)
        if (lengths > self.max_length).any() and not self._said_truncation:
            self._said_truncation = True
            logger.warning(
                "A scored sequence has %d tokens, more than max_length %d, so its first %d prompt tokens are cut (as "
                "TRL does). The data check measured every prompt and reference against the budget, so a rewrite or "
                "a draft re-tokenized longer than it was sampled is the likely cause; raise max_length. Said once.",
                int(lengths.max()),
                self.max_length,
                int(lengths.max()) - self.max_length,
            )
        if int(columns.min()) - excess < 1:
            raise ValueError(f"max_length ({self.max_length}) leaves no room for the prompt: raise max_length.")
        return input_ids[:, excess:], attention_mask[:, excess:], columns - excess

    # ------------------------------------------------------------- selective logits

    def selects_logits(self, model) -> bool:
        """Whether the model computes logits at chosen positions only, given a boolean ``logits_to_keep`` (rows x
        columns; transformers' `slice_logits_to_keep`, which then returns the kept positions flattened).

        It needs a forward that hands ``logits_to_keep`` to `slice_logits_to_keep` (nearly every transformers
        causal LM since 5.x; checked on the model's class, under PEFT on the base model's) and no prompt-learning
        adapter (virtual tokens widen the rows the mask is laid on). Otherwise `token_logps` asks for every
        position from the first scored one on, as before, and gathers from there: the same log-probabilities.
        """
        if not self.select_logits:
            return False
        unwrapped = self.unwrap(model)
        peft_config = getattr(unwrapped, "active_peft_config", None)
        if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
            self._say_full_logits("a prompt-learning adapter adds virtual tokens to the rows")
            return False
        if not _forward_slices_logits(_base_class(unwrapped)):
            self._say_full_logits(f"{_base_class(unwrapped).__name__}.forward does not slice logits by a mask")
            return False
        return True

    def _say_full_logits(self, reason: str) -> None:
        if not self._said_full_logits:
            self._said_full_logits = True
            logger.warning(
                "Selective logits are off (%s): the LM head and log-softmax run at every position from the first "
                "scored one on. The log-probabilities are the same; a step needs more memory. Said once.",
                reason,
            )

    def token_logps(
        self, model, inputs: dict[str, torch.Tensor], rows: torch.Tensor, columns: torch.Tensor, tokens: torch.Tensor
    ) -> torch.Tensor:
        """``log p(tokens[q] | the input up to (rows[q], columns[q]))`` for every query ``q``: one forward pass of
        ``model(**inputs)`` whose LM head and log-softmax run only at the queried positions where `selects_logits`
        allows (a position may be queried several times, for several tokens), else from the first queried column on.
        """
        width = inputs["input_ids"].size(1)
        if self.selects_logits(model):
            keep = torch.zeros(inputs["input_ids"].shape, dtype=torch.bool, device=rows.device)
            keep[rows, columns] = True
            flat = rows * width + columns
            source = keep.flatten().cumsum(0)[flat] - 1  # kept positions come out flattened, row after row
            logits = model(**inputs, logits_to_keep=keep).logits
            if logits.shape[:-1] == (int(keep.sum()),):
                return gathered_log_softmax(logits, source, tokens)
            _SLICES_LOGITS[_base_class(self.unwrap(model))] = False  # unexpected layout: not again
        first = int(columns.min()) if columns.numel() else width - 1
        logits = model(**inputs, logits_to_keep=width - first).logits
        source = rows * (width - first) + (columns - first)
        return gathered_log_softmax(logits.flatten(0, 1), source, tokens)

    # ------------------------------------------------------------- packing

    def packs(self, model, width: int) -> bool:
        """Whether the continuations of each prompt may be scored in one packed row instead of separate passes.

        ``width``: the widest row the separate passes would forward; past ``max_length`` they cut prompt tokens from
        the left (differently per pass), which one shared prompt cannot reproduce, so those batches are not packed.
        """
        return self.pack_shared_prefix and width <= self.max_length and self.packable(model)

    def packable(self, model) -> bool:
        """Whether packing gives exactly the separate passes' log-probabilities for this model (checked each call).

        It needs an attention that takes a custom 4D mask (``sdpa`` or ``eager``; not flash-attention, flex or
        kernels that build their own masks), rotary position embeddings (a branch's positions restart after the
        prompt, and only relative positions then match those of the separately padded rows), attention layers only
        (a recurrent layer would carry state across branches), no sliding window shorter than ``max_length`` (the
        custom mask replaces the model's own), and no prompt-learning adapter (virtual tokens change the row width).
        Otherwise the step falls back to the separate passes.
        """
        unwrapped = self.unwrap(model)
        config = getattr(unwrapped, "config", None)
        if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
            return False
        peft_config = getattr(unwrapped, "active_peft_config", None)
        if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
            return False
        layer_types = getattr(config, "layer_types", None) or ["full_attention"]
        if any(layer not in ("full_attention", "sliding_attention") for layer in layer_types):
            return False
        window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
        if window is not None and window < self.max_length:
            return False
        rotary = self._rotary_models.get(id(unwrapped))
        if rotary is None:  # the models a trainer holds live as long as it does
            rotary = any("rotary" in type(module).__name__.lower() for module in unwrapped.modules())
            self._rotary_models[id(unwrapped)] = rotary
        return rotary

    def pack(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, branches: list[list[list[int]]]) -> "Packed":
        """One row per prompt: ``[x | branch 1 | branch 2 | ...]``, each branch a continuation of ``x`` alone.

        ``x`` is the left-padded prompt block as the separate passes feed it; branch ``k`` of row ``i`` is the token
        list ``branches[k][i]``; the branches follow each other without gaps and the rows are right-padded. Position
        ids are the columns the separate passes give: the prompt block's own, then ``width(x) + j`` for token ``j``
        of every branch.
        """
        rows, width = prompt_ids.shape
        lengths = torch.tensor([[len(branch[row]) for branch in branches] for row in range(rows)], dtype=torch.long)
        total = width + max(1, int(lengths.sum(1).max()))
        ids = torch.full((rows, total), self.pad_token_id, dtype=torch.long)
        segments = torch.full((rows, total), -1, dtype=torch.long)
        positions = torch.arange(total, dtype=torch.long).repeat(rows, 1)
        starts = torch.zeros_like(lengths)
        ids[:, :width] = prompt_ids.cpu()
        segments[:, :width] = torch.where(prompt_mask.cpu().bool(), 0, -1)
        for row in range(rows):
            offset = 0
            for k, branch in enumerate(branches):
                tokens = branch[row]
                span = slice(width + offset, width + offset + len(tokens))
                ids[row, span] = torch.tensor(tokens, dtype=torch.long)
                segments[row, span] = k + 1
                positions[row, span] = torch.arange(width, width + len(tokens))
                starts[row, k] = offset
                offset += len(tokens)
        device = self.device
        return Packed(ids.to(device), positions.to(device), segments.to(device), width, starts, lengths)

    def packed_forward(
        self, model, packed: "Packed", scored: "list[torch.Tensor | None] | None" = None
    ) -> list[torch.Tensor]:
        """Per-token log-probabilities of every branch of `pack`'s rows, each given ``x`` and its own tokens only.

        Returns one tensor per branch, right-padded with zeros to its longest row (at least one column): the layout
        `PromptLayout.pad` gives the same tokens. A 4D mask lets a token see the prompt's real tokens
        and the earlier tokens of its own branch (`packed_attention`).
        ``scored[k]`` (rows x that layout's width, boolean; None: all): the tokens of branch ``k`` to score; the
        others read zero, and the LM head does not run for them (`token_logps`).
        """
        with self._timed():
            segments, width = packed.segments, packed.prompt_width
            allowed = packed_attention(segments)
            unwrapped = self.unwrap(model)
            if unwrapped.config._attn_implementation == "eager":  # eager adds the mask to the scores
                dtype = unwrapped.get_input_embeddings().weight.dtype
                mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
                mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)
            else:  # sdpa takes a boolean mask, True where attention is allowed
                mask = allowed
            device = segments.device
            starts, lengths = packed.starts.to(device), packed.lengths.to(device)
            queries, shapes = [], []
            for k in range(starts.size(1)):
                offsets = torch.arange(max(1, int(lengths[:, k].max())), device=device).unsqueeze(0)
                wanted = offsets < lengths[:, k : k + 1]
                if scored is not None and scored[k] is not None:
                    wanted = wanted & scored[k].to(device).bool()
                rows, offset = wanted.nonzero(as_tuple=True)
                column = width + starts[rows, k] + offset
                # A branch's first token follows the prompt's last column; every other token the one before it.
                queries.append((rows, offset, torch.where(offset == 0, width - 1, column - 1), column))
                shapes.append(wanted.shape)
            rows, _, predictors, columns = (torch.cat(parts) for parts in zip(*queries))
            inputs = {
                "input_ids": packed.input_ids,
                "attention_mask": mask.unsqueeze(1),
                "position_ids": packed.position_ids,
            }
            logps = self.token_logps(model, inputs, rows, predictors, packed.input_ids[rows, columns])
            self._count("grad" if logps.requires_grad else "no_grad", packed.input_ids.numel(), (segments >= 0).sum())
            result = []
            for (rows, offset, _, _), shape, values in zip(queries, shapes, logps.split([len(q[0]) for q in queries])):
                result.append(torch.zeros(shape, dtype=logps.dtype, device=device).index_put((rows, offset), values))
            return result

    @staticmethod
    def spans(logps: torch.Tensor, starts: list[int], lengths: list[int]) -> torch.Tensor:
        """Row ``i``'s ``lengths[i]`` values from ``starts[i]``, right-padded with zeros (one column or more)."""
        start = torch.tensor(starts, device=logps.device).unsqueeze(1)
        length = torch.tensor(lengths, device=logps.device).unsqueeze(1)
        offsets = torch.arange(max(1, *lengths), device=logps.device).unsqueeze(0)
        index = (start + offsets).clamp(max=logps.size(1) - 1)
        return logps.gather(1, index) * (offsets < length)

    def pair_logps(self, model, prompt_ids, prompt_mask, pair: Padded) -> torch.Tensor:
        """Per-token log-probabilities of ``pair``'s rows, the chosen sides then the rejected ones (one per prompt
        each), under the prompt: one packed row ``[x | chosen | rejected]`` per prompt where `packs` allows, else 2
        rows each."""
        if self.packs(model, prompt_ids.size(1) + pair.ids.size(1)):
            size = prompt_ids.size(0)
            branches = [pair.tokens[:size], pair.tokens[size:]]
            width = pair.ids.size(1)
            sides = self.packed_forward(model, self.pack(prompt_ids, prompt_mask, branches))
            return torch.cat([torch.nn.functional.pad(side, (0, width - side.size(1))) for side in sides], dim=0)
        return self.forward(model, prompt_ids.repeat(2, 1), prompt_mask.repeat(2, 1), pair.ids, pair.mask)

    def improver_scores(
        self,
        model,
        batch: DraftBatch,
        prompts: ImproverPrompts,
        targets: Padded,
        pair: Padded | None = None,
        sft_rows: Padded | None = None,
    ) -> Scores:
        """Everything the improver objective scores, and what a DPO step can take from the same passes.

        Always the targets (under the improver prompts) and, with ``policy_sft_weight > 0``, the policy's SFT rows
        ``sft_rows`` (under the policy prompts; the references unless given; held in the scores' ``reference``). In
        a DPO step (``pair``: the rewrites, then the drafts) with next-turn prompts, also the drafts, read inside the
        improver's own pass, and the rewrites where that pass is packed (`packed_scores`); the DPO loss forwards
        whatever is missing. Passes run in a fixed order: packed, else improver then reference.
        """
        pair = pair if prompts.next_turn else None
        sft_rows = batch.reference_tokens if sft_rows is None else sft_rows
        scores = self.packed_scores(model, batch, prompts, targets, pair, pair is not None, sft_rows)
        if scores is None:
            target, rejected = self.improver_logps(model, prompts, targets, pair is not None)
            scores = Scores(rejected=rejected, target=target)
        if self.policy_sft_weight > 0 and scores.reference is None:
            scores.reference = self.forward(model, batch.prompt_ids, batch.prompt_mask, sft_rows.ids, sft_rows.mask)
        return scores

    def improver_logps(
        self, model, prompts: ImproverPrompts, targets: Padded, score_rejected: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The targets' per-token log-probabilities under the improver prompts, and, with ``score_rejected``
        (next-turn prompts), the drafts' inside those prompts from the same pass (laid out like
        `PromptLayout.pad(drafts)`), else None. The unpacked path; `packed_scores` is the packed one."""
        target_ids, target_mask = targets.ids, targets.mask
        tail, tail_mask = 0, None
        if score_rejected:  # score the drafts at the end of the prompt block, not the new turn after them
            tail = max(r + a for r, a in zip(prompts.rejected_lengths, prompts.after_lengths))
            offsets = torch.arange(tail, device=target_ids.device).unsqueeze(0)
            after = torch.tensor(prompts.after_lengths, device=target_ids.device).unsqueeze(1)
            rejected = torch.tensor(prompts.rejected_lengths, device=target_ids.device).unsqueeze(1)
            tail_mask = (offsets >= tail - after - rejected) & (offsets < tail - after)
        logps = self.forward(
            model, prompts.ids, prompts.mask, target_ids, target_mask, prompt_tail=tail, tail_mask=tail_mask
        )
        rejected_logps = drafts_in_tail(logps[:, :tail], prompts) if score_rejected else None
        return logps[:, tail:], rejected_logps

    def policy_pair_logps(self, model, batch: DraftBatch, pair: Padded, scores: Scores | None = None) -> torch.Tensor:
        """The policy's per-token log-probabilities of ``pair`` (the chosen sides, then the drafts) under the policy
        prompts: what ``scores`` already holds (the next turn's fused pass scored the drafts, and the rewrites too
        when it was packed), the rest forwarded here (`pair_logps` when nothing is held)."""
        if scores is None or scores.rejected is None:
            return self.pair_logps(model, batch.prompt_ids, batch.prompt_mask, pair)
        completion_ids, completion_mask = pair.ids, pair.mask
        width = completion_ids.size(1)

        def padded(logps: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(logps, (0, width - logps.size(1)))[:, :width]

        if scores.chosen is not None:
            chosen_logps = padded(scores.chosen)
        else:
            size = batch.prompt_ids.size(0)
            chosen_logps = self.forward(
                model, batch.prompt_ids, batch.prompt_mask, completion_ids[:size], completion_mask[:size]
            )
        return torch.cat((chosen_logps, padded(scores.rejected)), dim=0)

    def packed_scores(
        self,
        model,
        batch: DraftBatch,
        prompts: ImproverPrompts,
        targets: Padded,
        pair: Padded | None,
        score_rejected: bool = True,
        sft_rows: Padded | None = None,
    ) -> Scores | None:
        """Next turn: everything the step scores under the policy prompt ``x``, in one packed forward pass.

        One row per prompt, ``[x | y, new turn, target | y' | reference]`` (``y'`` in DPO steps, the reference when
        ``policy_sft_weight > 0``, or the ``sft_rows`` given), gives the draft's and the target's log-probabilities
        (the fused next-turn pass), the rewrite's (the DPO chosen side) and the SFT rows' (the policy's SFT loss). None
        where packing does not apply: the template format (its prompt does not continue ``x``), a single branch, or
        `packs` says no. Of the conversation branch only the target, and the draft where ``score_rejected`` (else the
        scores' ``rejected`` is None), are scored: the new turn's instruction is context, its logits are not computed.
        """
        sft = self.policy_sft_weight > 0
        sft_rows = batch.reference_tokens if sft_rows is None else sft_rows
        if not prompts.next_turn or (pair is None and not sft):
            return None
        target_tokens = targets.tokens
        widths = [prompts.ids.size(1) + max(1, *map(len, target_tokens))]
        prompt_width = batch.prompt_ids.size(1)
        if sft:
            widths.append(prompt_width + max(1, *map(len, sft_rows.tokens)))
        if pair is not None:
            widths.append(prompt_width + max(1, *map(len, pair.tokens)))
        if not self.packs(model, max(widths)):
            return None
        prompt_lengths = batch.prompt_mask.sum(1).tolist()
        conversations = [
            row[mask.bool()].tolist()[length:] + target
            for row, mask, length, target in zip(prompts.ids, prompts.mask, prompt_lengths, target_tokens)
        ]
        branches = [conversations]
        if pair is not None:
            branches.append(pair.tokens[: len(target_tokens)])  # the rewrites (the pair's drafts come after them)
        if sft:
            branches.append(sft_rows.tokens)
        before_target = [r + a for r, a in zip(prompts.rejected_lengths, prompts.after_lengths)]
        offsets = torch.arange(max(1, *map(len, conversations))).unsqueeze(0)
        starts = torch.tensor(before_target).unsqueeze(1)
        scored = offsets >= starts  # the target
        if score_rejected:
            scored |= offsets < torch.tensor(prompts.rejected_lengths).unsqueeze(1)  # the draft
        packed = self.pack(batch.prompt_ids, batch.prompt_mask, branches)
        logps = self.packed_forward(model, packed, [scored] + [None] * (len(branches) - 1))
        conversation = logps[0]
        return Scores(
            rejected=self.spans(conversation, [0] * len(target_tokens), prompts.rejected_lengths)
            if score_rejected
            else None,
            target=self.spans(conversation, before_target, list(map(len, target_tokens))),
            chosen=logps[1] if pair is not None else None,
            reference=logps[-1] if sft else None,
        )


def packed_attention(segments: torch.Tensor) -> torch.Tensor:
    """The 4D mask of packed rows (rows x queries x keys, True where attention is allowed), from `Packed.segments`:
    a token sees the prompt's real tokens (segment 0) and the earlier tokens of its own branch, never padding (-1)
    nor another branch; every token, padding included, sees itself (no empty rows in the softmax). Padding's own
    outputs are never read."""
    query, key = segments.unsqueeze(2), segments.unsqueeze(1)
    total = segments.size(1)
    causal = torch.ones(total, total, dtype=torch.bool, device=segments.device).tril()
    allowed = causal & (key >= 0) & ((key == 0) | (key == query))
    return allowed | torch.eye(total, dtype=torch.bool, device=segments.device)


def drafts_in_tail(tail_logps: torch.Tensor, prompts: ImproverPrompts) -> torch.Tensor:
    """The drafts' log-probabilities out of the scored prompt tail, right-padded (zeros) to the longest draft.

    Row ``i`` of the tail ends with its draft (``rejected_lengths[i]`` tokens) and then ``after_lengths[i]`` tokens
    of the new turn; rows are left-padded, so both are counted from the right.
    """
    tail = tail_logps.size(1)
    rejected = torch.tensor(prompts.rejected_lengths, device=tail_logps.device)
    after = torch.tensor(prompts.after_lengths, device=tail_logps.device)
    width = max(1, int(rejected.max()))
    offsets = torch.arange(width, device=tail_logps.device)
    index = (tail - after - rejected).unsqueeze(1) + offsets.unsqueeze(0)
    valid = offsets.unsqueeze(0) < rejected.unsqueeze(1)
    return tail_logps.gather(1, index.clamp(0, max(tail - 1, 0))) * valid


# class of a model (the base model's under PEFT) -> whether its forward slices logits with `slice_logits_to_keep`
_SLICES_LOGITS: dict[type, bool] = {}


def _base_class(unwrapped: nn.Module) -> type:
    """The class whose forward computes the logits: the base model's under PEFT."""
    return type(unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped)


def _forward_slices_logits(model_class: type) -> bool:
    """Whether ``model_class.forward`` hands ``logits_to_keep`` to transformers' `slice_logits_to_keep`, and that
    function keeps the positions of a boolean (rows x columns) mask (the models of transformers 5.x)."""
    if model_class not in _SLICES_LOGITS:
        try:
            from transformers.modeling_utils import slice_logits_to_keep

            source = inspect.getsource(model_class.forward)
            probe = slice_logits_to_keep(torch.zeros(2, 3, 1), torch.tensor([[True, False, True], [False] * 3]))
            _SLICES_LOGITS[model_class] = "slice_logits_to_keep(" in source and probe.shape == (2, 1)
        except (ImportError, OSError, TypeError, IndexError, RuntimeError):
            _SLICES_LOGITS[model_class] = False
    return _SLICES_LOGITS[model_class]


@dataclass
class Packed:
    """Rows of `Scorer.pack`: ``[x | branch 1 | branch 2 | ...]`` per prompt.

    ``segments``: -1 for padding, 0 for the prompt ``x``, ``k + 1`` for branch ``k``; ``starts`` / ``lengths`` (rows x
    branches, on the CPU): where each branch begins after the prompt block, and its tokens.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segments: torch.Tensor
    prompt_width: int
    starts: torch.Tensor
    lengths: torch.Tensor
