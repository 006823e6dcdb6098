"""The improver's rewrite speculated from its draft: batched prompt-lookup decoding that keeps the exact distribution.

A rewrite is by design an incremental edit of its draft, so most of its tokens are the draft's. Each step proposes
the draft's next tokens at the rewrite's current alignment (`propose`), runs them through the model in one forward
pass with the row's last sampled token, and keeps the agreeing prefix (`verify`), plus one token sampled by the
model: a rewrite that copies its draft costs one forward pass per accepted run instead of one per token.

Exactness. Greedy: a proposed token is kept when it is the argmax, so the rewrite is token for token the plain
greedy one. Sampling: the proposal is deterministic (a point mass on the draft's token ``t``), so speculative
sampling's rule is: keep ``t`` with probability ``p(t)``; otherwise sample from ``p`` with ``t`` removed and
renormalised. Each token is then distributed exactly as plain sampling's: ``P(t) = p(t)``, and for ``s != t``,
``P(s) = (1 - p(t)) * p(s) / (1 - p(t)) = p(s)``. ``p`` is the distribution plain `generate` samples from: the
model's logits through the same warpers (temperature, top-k, top-p, min-p); generation settings that would need
more (a repetition penalty, say) are refused by `unsupported_settings`.

Batched. Rows keep different numbers of tokens per step: every row's block is written to the KV cache, and the
positions of the tokens a row rejected (and of padding) are masked out of the attention mask from then on, with
positions taken from the mask, as `generate` does for padding. transformers' own prompt lookup
(``prompt_lookup_num_tokens``) runs one row at a time (assisted generation raises for a batch), hence this module.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessorList
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


# Generation settings that change the next-token distribution beyond the warpers built here: with any of them set,
# speculation would sample from another distribution than plain generation, so it is refused.
_UNSUPPORTED = {
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "sequence_bias": None,
    "min_length": 0,
    "min_new_tokens": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "top_h": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "guidance_scale": None,
    "num_beams": 1,
    "renormalize_logits": False,
}


def unsupported_settings(generation_config: GenerationConfig) -> list[str]:
    """The settings of ``generation_config`` that speculation cannot reproduce exactly (empty: it can)."""
    found = []
    for name, neutral in _UNSUPPORTED.items():
        value = getattr(generation_config, name, neutral)
        if value not in (neutral, None) and not (name == "guidance_scale" and value == 1):
            found.append(f"{name}={value!r}")
    return found


def warpers(generation_config: GenerationConfig) -> LogitsProcessorList:
    """The logits warpers plain sampling applies, in `generate`'s order (temperature, top-k, top-p, min-p)."""
    config = generation_config
    processors = LogitsProcessorList()
    if not config.do_sample:
        return processors
    if config.temperature is not None and config.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k is not None and config.top_k != 0:
        processors.append(TopKLogitsWarper(top_k=config.top_k, min_tokens_to_keep=1))
    if config.top_p is not None and config.top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p=config.top_p, min_tokens_to_keep=1))
    if config.min_p is not None:
        processors.append(MinPLogitsWarper(min_p=config.min_p, min_tokens_to_keep=1))
    return processors


def propose(
    generated: Sequence[int], draft: Sequence[int], pointer: int, k: int, max_ngram: int = 3
) -> tuple[list[int], int]:
    """Up to ``k`` next tokens of ``draft`` at the rewrite's current alignment, and where in the draft they start.

    ``pointer``: where in the draft the previous step's accepted run ended (the draft token the model's own token of
    that step stood for). The alignment: nothing generated yet, the draft's start; else the draft position right
    after the longest n-gram (``2 <= n <= max_ngram``) that also ends ``generated``, the first such at or after
    ``pointer`` (an edit moves forward through its draft), else the last one before it; no such n-gram: after the
    draft's next token where the model's last token is that one (the draft's token at ``pointer`` was dropped), else
    the position after ``pointer``, as if the model's last token replaced the draft's there (the commonest edit).
    """
    if k <= 0:
        return [], pointer
    if not generated:
        return list(draft[:k]), 0
    for n in range(min(max_ngram, len(generated)), 1, -1):
        suffix = list(generated[-n:])
        ends = [end for end in range(n, len(draft)) if list(draft[end - n : end]) == suffix]
        if ends:
            forward = [end for end in ends if end >= pointer]
            start = forward[0] if forward else ends[-1]
            return list(draft[start : start + k]), start
    if pointer + 1 < len(draft) and generated[-1] == draft[pointer + 1]:  # the draft's token at pointer was dropped
        return list(draft[pointer + 2 : pointer + 2 + k]), pointer + 2
    return list(draft[pointer + 1 : pointer + 1 + k]), pointer + 1


def verify(
    distributions: torch.Tensor,
    proposals: Sequence[Sequence[int] | None],
    do_sample: bool,
    generator: torch.Generator | None = None,
    stop_tokens: Sequence[int] = (),
) -> list[tuple[list[int], int] | None]:
    """Per row, the tokens it keeps from one step and how many of them are accepted proposals (None: row skipped).

    ``distributions[row, i]`` is the next-token distribution (probabilities; scores when greedy) after the row's
    ``i``-th token of the step's block, so it judges ``proposals[row][i]``; the one after the last proposal gives the
    bonus token. Kept: the accepted prefix of the proposals, then one token of the model's (on a rejection, sampled
    from the distribution with the rejected token removed), except after an accepted stop token, where the row ends.
    The per-position work is done for the whole batch at once; only the bookkeeping is per row.
    """
    rows, width, _ = distributions.shape
    padded = torch.zeros((rows, max(width - 1, 1)), dtype=torch.long, device=distributions.device)
    for row, proposed in enumerate(proposals):
        if proposed:
            padded[row, : len(proposed)] = torch.tensor(proposed, device=distributions.device)
    if do_sample:
        chances = distributions[:, : width - 1].gather(-1, padded[:, : width - 1].unsqueeze(-1)).squeeze(-1)
        draws = torch.rand(chances.shape, generator=generator, device=distributions.device)
        agrees = (draws < chances).tolist()
    else:
        agrees = (distributions[:, : width - 1].argmax(-1) == padded[:, : width - 1]).tolist()
    decisions: list[tuple[list[int], int] | None] = []
    to_sample: list[tuple[int, int, int | None]] = []  # (row, position, token to remove or None)
    for row, proposed in enumerate(proposals):
        if proposed is None:
            decisions.append(None)
            continue
        accepted = 0
        while accepted < len(proposed) and agrees[row][accepted]:
            accepted += 1
            if proposed[accepted - 1] in stop_tokens:
                break
        kept = list(proposed[:accepted])
        decisions.append((kept, accepted))
        if not (kept and kept[-1] in stop_tokens):
            to_sample.append((row, accepted, proposed[accepted] if accepted < len(proposed) else None))
    if to_sample:
        index = torch.tensor([[row, position] for row, position, _ in to_sample], device=distributions.device)
        chosen = distributions[index[:, 0], index[:, 1]]
        if do_sample:
            chosen = chosen.clone()
            for k, (_, _, rejected) in enumerate(to_sample):
                if rejected is not None:
                    chosen[k, rejected] = 0.0  # the residual: p without the rejected token, renormalised
            tokens = torch.multinomial(chosen / chosen.sum(-1, keepdim=True), 1, generator=generator).squeeze(-1)
        else:
            tokens = chosen.argmax(-1)
        for (row, _, _), token in zip(to_sample, tokens.tolist()):
            decisions[row][0].append(token)
    return decisions


@dataclass
class SpeculationStats:
    """What a speculated generation did: tokens generated, of them accepted from the draft, forward passes."""

    generated: int = 0
    accepted: int = 0
    proposed: int = 0
    forwards: int = 0

    @property
    def accepted_share(self) -> float:
        return self.accepted / self.generated if self.generated else 0.0


@torch.no_grad()
def speculative_generate(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    drafts: Sequence[Sequence[int]],
    generation_config: GenerationConfig,
    eos_token_ids: Sequence[int],
    cache: Any = None,
    num_speculative_tokens: int = 8,
    generator: torch.Generator | None = None,
    stats: SpeculationStats | None = None,
) -> torch.Tensor:
    """Like ``model.generate(input_ids, attention_mask, generation_config=..., cache=...)``: the prompt rows followed
    by the generated tokens, padded after each row's EOS, with each row's tokens proposed from ``drafts[row]``.

    ``cache``: a KV cache holding the first ``cache.get_seq_length()`` columns of ``input_ids`` (the drafts' cache of
    the next-turn format), extended here; unset, a new one. ``generation_config`` must pass `unsupported_settings`.
    """
    config = generation_config
    if unsupported := unsupported_settings(config):
        raise ValueError(f"speculation cannot sample exactly with {', '.join(unsupported)}")
    stats = stats if stats is not None else SpeculationStats()
    processors = warpers(config)
    eos = set(int(t) for t in eos_token_ids)
    pad = config.pad_token_id if config.pad_token_id is not None else next(iter(eos))
    batch, device = input_ids.size(0), input_ids.device
    cache = cache if cache is not None else DynamicCache(config=model.config)
    mask = attention_mask.clone()
    cached = cache.get_seq_length()
    if cached >= input_ids.size(1):
        raise ValueError(f"the cache holds {cached} tokens: the prompts must go beyond it ({input_ids.size(1)})")

    def next_distributions(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits [rows, positions, vocab] -> what plain generation samples from (probabilities), or argmax scores."""
        scores = logits.float()
        rows, positions, vocab = scores.shape
        scores = processors(ids, scores.reshape(rows * positions, vocab)).reshape(rows, positions, vocab)
        return torch.softmax(scores, dim=-1) if config.do_sample else scores

    generated: list[list[int]] = [[] for _ in range(batch)]
    pointers = [0] * batch  # where each row's last accepted run ended in its draft
    max_new = config.max_new_tokens

    def active(row: int) -> bool:
        return not generated[row] or (generated[row][-1] not in eos and len(generated[row]) < max_new)

    # Every step's block: what the cache lacks of each row (first the prompts' uncached columns, then the row's last
    # token), followed by the row's proposals, padding masked. The first step proposes the draft's start.
    head, head_mask = input_ids[:, cached:], mask[:, cached:]
    mask = mask[:, :cached]
    while any(active(row) for row in range(batch)):
        proposals: list[list[int] | None] = []
        for row in range(batch):
            if not active(row):
                proposals.append(None)
                continue
            room = min(num_speculative_tokens, max_new - len(generated[row]) - 1)
            proposed, pointers[row] = propose(generated[row], drafts[row], pointers[row], room)
            stop = next((i + 1 for i, token in enumerate(proposed) if token in eos), len(proposed))
            proposals.append(proposed[:stop])
        width = max(len(p) for p in proposals if p is not None)
        tail = torch.full((batch, width), pad, dtype=input_ids.dtype, device=device)
        tail_mask = torch.zeros((batch, width), dtype=mask.dtype, device=device)
        for row, proposed in enumerate(proposals):
            if proposed:
                tail[row, : len(proposed)] = torch.tensor(proposed, dtype=tail.dtype, device=device)
                tail_mask[row, : len(proposed)] = 1
        block, block_mask = torch.cat((head, tail), dim=1), torch.cat((head_mask, tail_mask), dim=1)
        mask = torch.cat((mask, block_mask), dim=1)
        # positions from the mask, as `generate` computes them: padding and rejected tokens take no position
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -block.size(1) :]
        logits = model(input_ids=block, attention_mask=mask, position_ids=positions, cache=cache).logits
        stats.forwards += 1
        # the distributions after the head's last token and after each proposal (the warpers read no ids)
        distributions = next_distributions(logits[:, head.size(1) - 1 :], block)
        decisions = verify(distributions, proposals, config.do_sample, generator, tuple(eos))
        for row, decision in enumerate(decisions):
            if decision is None:
                continue
            kept, accepted = decision
            # the block's proposals after the accepted run are not the row's: out of the attention from now on
            mask[row, mask.size(1) - width + accepted :] = 0
            generated[row] += kept
            pointers[row] += accepted
            stats.proposed += len(proposals[row])
            stats.accepted += accepted
        # the next head: each active row's last token, which the cache does not hold yet
        head = torch.tensor([[tokens[-1]] for tokens in generated], dtype=input_ids.dtype, device=device)
        head_mask = torch.tensor([[int(active(row))] for row in range(batch)], dtype=mask.dtype, device=device)

    stats.generated += sum(len(tokens) for tokens in generated)
    longest = max(len(tokens) for tokens in generated)
    rows = [tokens + [pad] * (longest - len(tokens)) for tokens in generated]
    return torch.cat((input_ids, torch.tensor(rows, dtype=input_ids.dtype, device=device)), dim=1)
