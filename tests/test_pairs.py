"""The degenerate-pair filter and the pair gates on hand-made pairs."""

from types import SimpleNamespace

import pytest
import torch

from trl_sgpo.method.pairs import filter_pairs, gate_pairs
from trl_sgpo.records import Completion, DraftBatch, ImproverPrompts, Padded
from trl_sgpo.step.pair_gates import PairGate, margins


def test_each_rule_drops_and_counts_its_pairs():
    chosen = [
        Completion([1, 2], True),  # kept
        Completion([3], True),  # identical to the rejected side
        Completion([], True),  # empty chosen
        Completion([4, 5], False),  # chosen cut at the length limit
        Completion([6], True),  # rejected cut at the length limit
        Completion([7], True),  # empty rejected
    ]
    rejected = [
        Completion([1, 3], True),
        Completion([3], True),
        Completion([9], True),
        Completion([4], True),
        Completion([6, 6], False),
        Completion([], True),
    ]
    result = filter_pairs(chosen, rejected)
    assert result.keep == [True, False, False, False, False, False]
    assert result.reasons == [None, "identical", "empty", "truncated", "truncated", "empty"]
    assert result.num_kept == 1


def test_identical_takes_precedence_over_truncation():
    result = filter_pairs([Completion([1], False)], [Completion([1], False)])
    assert result.reasons == ["identical"]


# ------------------------------------------------------------------------------------------ pair gates


def test_the_gate_drops_kept_pairs_only_and_counts_them_as_gated():
    filtered = filter_pairs([Completion([1], True)] * 3, [Completion([2], True)] * 2 + [Completion([1], True)])
    result = gate_pairs(filtered, [True, False, False])
    assert result.keep == [True, False, False]
    assert result.reasons == [None, "gated", "identical"]  # a pair the filter dropped keeps its reason


def _pair(chosen: list[list[int]], rejected: list[list[int]]) -> Padded:
    rows = chosen + rejected
    width = max(map(len, rows))
    ids = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    return Padded(rows, ids, mask)


def test_the_reference_margin_gate_keeps_a_rewrite_the_initial_policy_finds_more_plausible():
    # pair 0: rewrite at -0.5 per token, draft at -2.0: kept. pair 1: rewrite at -3.0, draft at -1.0: dropped.
    pair = _pair([[5, 6], [7]], [[8, 9, 9], [4, 4]])
    logps = torch.tensor([[-0.5, -0.5, 0.0], [-3.0, 0.0, 0.0], [-2.0, -2.0, -2.0], [-1.0, -1.0, 0.0]])
    gate = PairGate("reference_margin", 0.0, scorer=None, rewrite=None, reference_logps=lambda batch, pair: logps)
    passes, ref_logps = gate(None, None, None, [Completion([5, 6], True), Completion([7], True)], pair)
    assert passes == [True, False] and ref_logps is logps  # the DPO loss reuses them
    assert margins(logps, pair.mask) == pytest.approx([1.5, -2.0])
    strict = PairGate("reference_margin", 2.0, scorer=None, rewrite=None, reference_logps=lambda batch, pair: logps)
    assert strict(None, None, None, [Completion([5, 6], True)] * 2, pair)[0] == [False, False]


def test_the_improver_keep_gate_drops_a_pair_whose_improver_would_rather_keep_the_draft():
    pair = _pair([[5], [6]], [[7], [8]])
    prompts = ImproverPrompts(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))
    scored = []

    class Scorer:
        def forward(self, model, prompt_ids, prompt_mask, completion_ids, completion_mask):
            scored.append(prompt_ids.shape)
            # the improver's log-prob of each side as its answer: rewrites -0.2 / -2.0, drafts -1.0 / -0.1
            return torch.tensor([[-0.2], [-2.0], [-1.0], [-0.1]])

    gate = PairGate("improver_keep", 0.0, scorer=Scorer(), rewrite=None, reference_logps=None)
    passes, ref_logps = gate(None, None, prompts, [Completion([5], True), Completion([6], True)], pair)
    assert passes == [True, False] and ref_logps is None and scored == [(4, 3)]  # both sides, one pass


def test_the_round_trip_gate_keeps_a_rewrite_the_improver_leaves_unchanged():
    rewrites = [Completion([5, 6], True), Completion([7], True)]
    seen = []

    def rewrite(model, batch, role):
        seen.append((batch.drafts, role))
        return SimpleNamespace(completions=[Completion([5, 6], True), Completion([7, 7], True)])

    ids = torch.ones(2, 1, dtype=torch.long)
    references = _pair([[1]], [[1]])
    batch = DraftBatch(["x", "y"], ["x", "y"], ids, ids, [Completion([1], True)] * 2, ["r", "r"], [], references, {})
    batch.draft_cache = "the drafts' cache"
    gate = PairGate("round_trip", 0.0, scorer=None, rewrite=rewrite, reference_logps=None)
    passes, _ = gate(None, batch, ImproverPrompts(ids, ids), rewrites, _pair([[5, 6], [7]], [[1], [1]]))
    assert passes == [True, False] and seen == [(rewrites, "improver_greedy")]  # the rewrites, rewritten greedily
