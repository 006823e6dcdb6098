"""The pure parts of a step, without a model: objectives, statistics, the end-of-sequence rules, the length budget,
the packed layout and its mask, and the span arithmetic the scorer reads log-probabilities with."""

import logging
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from trl_sgpo.data.prompt_lengths import PromptBudget
from trl_sgpo.method.objectives import dpo_objective, improver_objective, token_mean_nll
from trl_sgpo.method.pairs import filter_pairs
from trl_sgpo.method.step_stats import RewriteHealth, StepStats, nan_mean, pair_stats, reduce_stats
from trl_sgpo.records import Completion, ImproverPrompts
from trl_sgpo.step.scoring import Scorer, drafts_in_tail, packed_attention


ONE_PROCESS = SimpleNamespace(num_processes=1, device=torch.device("cpu"))


# ---------------------------------------------------------------------------------------------- objectives


def test_dpo_objective_by_hand():
    """Two pairs, the second dropped: the loss is pair 1's -log sigmoid(beta * margin) plus its chosen NLL."""
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]], dtype=torch.float64)
    policy = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0], [-1.0, -1.0, -1.0], [-3.0, -1.0, -9.0]]).double()
    ref = torch.tensor([[-1.5, -2.0, -7.0], [-1.0, -7.0, -7.0], [-0.5, -1.0, -1.0], [-2.0, -2.0, -7.0]]).double()
    beta, weight, scale = 0.5, 0.3, 0.25
    terms = dpo_objective(policy, ref, mask, [True, False], beta, "sigmoid", weight, scale)
    # pair 1: chosen row 0 (2 tokens), rejected row 2 (3 tokens); padding (the -9s and -7s) never counts
    margin = ((-3.0) - (-3.0)) - ((-3.5) - (-2.5))
    expected = (-math.log(1 / (1 + math.exp(-beta * margin))) + weight * 3.0 / 2) * scale
    assert terms.loss.item() == pytest.approx(expected, rel=1e-12)
    assert terms.stats["rewards/margins"] == pytest.approx([beta * margin])  # kept pairs only
    assert terms.stats["rewards/chosen"] == pytest.approx([beta * (-3.0 + 3.5)])
    assert terms.stats["logps/rejected"] == pytest.approx([-3.0])
    # KL and entropy describe every draft (rows 2 and 3), kept or not
    assert terms.stats["objective/kl"] == pytest.approx([-3.0 + 2.5, -4.0 + 4.0])
    assert terms.stats["objective/entropy"] == pytest.approx([3.0, 4.0])


def test_ipo_and_unknown_losses():
    mask = torch.ones(2, 1, dtype=torch.float64)
    logps, ref = torch.tensor([[-1.0], [-2.0]]).double(), torch.zeros(2, 1, dtype=torch.float64)
    terms = dpo_objective(logps, ref, mask, [True], beta=0.1, loss_type="ipo")
    assert terms.loss.item() == pytest.approx((1.0 - 1 / 0.2) ** 2)
    with pytest.raises(ValueError, match="Unknown loss_type 'hinge'"):
        dpo_objective(logps, ref, mask, [True], beta=0.1, loss_type="hinge")


def test_dpo_objective_gradient_flows_to_kept_pairs_only():
    mask = torch.ones(4, 2)
    policy = torch.randn(4, 2, generator=torch.Generator().manual_seed(0)).requires_grad_()
    dpo_objective(policy, torch.zeros(4, 2), mask, [True, False], beta=0.1).loss.backward()
    assert policy.grad[[0, 2]].abs().sum() > 0
    assert policy.grad[[1, 3]].abs().sum() == 0


def test_improver_objective_by_hand():
    target = torch.tensor([[-1.0, -3.0], [-2.0, -5.0]]).double()
    target_mask = torch.tensor([[1, 1], [1, 0]]).double()
    reference = torch.tensor([[-4.0], [-6.0]]).double()
    loss, stats = improver_objective(target, target_mask, [True, False], reference, torch.ones(2, 1), 0.5, 0.1)
    assert loss.item() == pytest.approx(0.1 * 2.0 + 0.5 * 0.1 * (4.0 + 6.0))
    assert stats == {"sgpo/improver_loss": [2.0], "sgpo/policy_sft_loss": [4.0, 6.0]}
    loss, stats = improver_objective(target, target_mask, [True, True])
    assert loss.item() == pytest.approx(2.0 + 2.0) and "sgpo/policy_sft_loss" not in stats
    assert token_mean_nll(torch.zeros(1, 2), torch.zeros(1, 2)).item() == 0  # an empty row is 0, not NaN


# ---------------------------------------------------------------------------------------------- statistics


def test_step_stats_pool_values_added_twice_and_reduce_to_means_and_sums():
    stats = StepStats()
    stats.add("sgpo/improver_loss", [1.0, 2.0])
    stats.add("sgpo/improver_loss", [6.0])  # pooled, not overwritten
    stats.add("sgpo/empty_batches", [1.0], reduce="sum")
    stats.add("sgpo/empty_batches", [1.0], reduce="sum")
    stats.add("rewards/chosen", [])  # no kept pair
    reduced = reduce_stats(stats, ONE_PROCESS)
    assert reduced["sgpo/improver_loss"] == 3.0
    assert reduced["sgpo/empty_batches"] == 2.0
    assert math.isnan(reduced["rewards/chosen"])
    with pytest.raises(ValueError, match="reduced by 'sum'"):
        stats.add("sgpo/empty_batches", [1.0])
    assert nan_mean([1.0, math.nan, 3.0]) == 2.0 and math.isnan(nan_mean([math.nan]))


def test_rewrite_health_warns_once_after_its_window(caplog):
    health = RewriteHealth(window=3, warn_below=0.2)
    with caplog.at_level(logging.WARNING, logger="trl_sgpo.method.step_stats"):
        for closer in (0.0, 0.1):
            health.observe(closer)
        assert "not ready" not in caplog.text
        for closer in (0.2, 0.0, 0.0):
            health.observe(closer)
    assert caplog.text.count("improver role is not ready") == 1 and "10%" in caplog.text
    quiet = RewriteHealth(window=2, warn_below=0.2)
    quiet.observe(0.1)
    quiet.observe(0.3)  # mean 0.2: not below
    assert quiet.checked


def test_rewrite_closer_judges_only_the_rewrites_that_changed_their_draft():
    """A right draft kept as it is (what keep_plausible targets teach) is no sign of an unready improver: of the
    rewrites that changed their draft, one moved to the reference and one away from it; the two kept drafts (one
    right, one wrong) are left out. No rewrite changed: NaN, and the health check waits for a step that says
    something."""
    reference = [Completion([1, 2, 3], True)] * 4
    drafts = [
        Completion([1, 2, 3], True),
        Completion([1, 2, 9], True),
        Completion([1, 2, 9], True),
        Completion([4], True),
    ]
    chosen = [drafts[0], drafts[1], Completion([1, 2, 3], True), Completion([4, 5], True)]
    stats = StepStats()
    pair_stats(stats, chosen, drafts, reference, filter_pairs(chosen, drafts))
    reduced = reduce_stats(stats, ONE_PROCESS)
    assert reduced["sgpo/rewrite_closer"] == 0.5 and reduced["sgpo/pairs_identical"] == 0.5
    unchanged = StepStats()
    pair_stats(unchanged, drafts, drafts, reference, filter_pairs(drafts, drafts))
    assert math.isnan(reduce_stats(unchanged, ONE_PROCESS)["sgpo/rewrite_closer"])
    health = RewriteHealth(window=2, warn_below=0.2)
    health.observe(math.nan)
    health.observe(0.5)
    assert not health.checked and health.history == [0.5]


# ---------------------------------------------------------------------------------------- end of sequence


def test_generated_rows_become_completions_with_the_eos_they_sampled():
    eos = [7, 9]
    assert Completion.from_generated([1, 2, 9], eos) == Completion([1, 2], True, 9)
    assert Completion.from_generated([1, 2], eos) == Completion([1, 2], False, None)
    assert Completion.from_generated([1, 2], eos, stopped=True) == Completion([1, 2], True, None)
    assert Completion.from_generated([], eos) == Completion([], False, None)
    # scored: content, then the template's end of turn whichever EOS was sampled; nothing after a cut completion
    assert Completion([1, 2], True, 9).scored_tokens(end_of_turn=7) == [1, 2, 7]
    assert Completion([1, 2], True).scored_tokens(end_of_turn=7) == [1, 2, 7]
    assert Completion([1, 2], False).scored_tokens(end_of_turn=7) == [1, 2]
    # a draft that ended on another EOS id than the end of turn: its cache differs from the rendered conversation
    assert Completion([1, 2], True, 9).ended_off_turn(7) and not Completion([1, 2], True, 7).ended_off_turn(7)
    assert not Completion([1, 2], True).ended_off_turn(7) and not Completion([1, 2], False).ended_off_turn(7)


# ------------------------------------------------------------------------------------------- length budget


def test_the_length_budget_has_one_rule():
    args = SimpleNamespace(max_length=100, max_new_tokens=30, improver_max_new_tokens=None, pair_source="sgpo")
    budget = PromptBudget.of_generation(args, template_tokens=12)
    assert budget.available == 100 - 12 - 30 - 30
    assert "improver template 12" in budget.arithmetic()
    assert PromptBudget.of_generation(SimpleNamespace(**{**vars(args), "pair_source": "spin"})).available == 70
    assert PromptBudget.of_generation(args).arithmetic() == (
        "max_length 100 - max_new_tokens 30 - improver_max_new_tokens 30 = 40"
    )


# ------------------------------------------------------------------------------ packed rows and their spans


def _scorer() -> Scorer:
    return Scorer(max_length=100, pad_token_id=0, device=torch.device("cpu"), unwrap=lambda model: model)


def test_pack_lays_out_the_prompt_then_each_branch_with_the_separate_passes_positions():
    prompt_ids = torch.tensor([[0, 5, 6], [7, 8, 9]])  # row 0 left-padded
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    packed = _scorer().pack(prompt_ids, prompt_mask, [[[11, 12], [21]], [[13], [22, 23, 24]]])
    assert packed.input_ids.tolist() == [[0, 5, 6, 11, 12, 13, 0], [7, 8, 9, 21, 22, 23, 24]]
    assert packed.segments.tolist() == [[-1, 0, 0, 1, 1, 2, -1], [0, 0, 0, 1, 2, 2, 2]]
    # every branch continues at column 3 (the width of the prompt block), as its own separate pass would
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 6], [0, 1, 2, 3, 3, 4, 5]]
    assert packed.starts.tolist() == [[0, 2], [0, 1]] and packed.lengths.tolist() == [[2, 1], [1, 3]]


def test_the_packed_mask_sees_the_prompt_and_its_own_branch_only():
    segments = torch.tensor([[-1, 0, 0, 1, 1, 2, -1]])
    allowed = packed_attention(segments)[0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0, 0],  # left padding sees itself only
        [0, 1, 0, 0, 0, 0, 0],
        [0, 1, 1, 0, 0, 0, 0],
        [0, 1, 1, 1, 0, 0, 0],  # branch 1: prompt, then itself causally
        [0, 1, 1, 1, 1, 0, 0],
        [0, 1, 1, 0, 0, 1, 0],  # branch 2: the prompt, not branch 1
        [0, 1, 1, 0, 0, 0, 1],  # right padding: its values are never read, and no token sees it
    ]


def test_spans_and_the_drafts_inside_the_prompt_tail():
    logps = torch.arange(1.0, 13.0).reshape(2, 6)
    assert Scorer.spans(logps, [1, 3], [2, 3]).tolist() == [[2.0, 3.0, 0.0], [10.0, 11.0, 12.0]]
    # tail of 5 columns: row 0 = [pad, draft d1 d2, after a1 a2]; row 1 = [draft d1 d2 d3, after a1]
    tail = torch.tensor([[0.0, -1.0, -2.0, -8.0, -8.0], [-3.0, -4.0, -5.0, -6.0, -8.0]])
    prompts = ImproverPrompts(torch.empty(0), torch.empty(0), rejected_lengths=[2, 4], after_lengths=[2, 1])
    assert drafts_in_tail(tail, prompts).tolist() == [[-1.0, -2.0, 0.0, 0.0], [-3.0, -4.0, -5.0, -6.0]]
    assert prompts.next_turn and not ImproverPrompts(torch.empty(0), torch.empty(0)).next_turn


def test_the_gathered_log_softmax_is_log_softmax_at_the_picked_tokens():
    from trl_sgpo.step.gathered_log_softmax import gathered_log_softmax

    logits = torch.randn(5, 11, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    source, tokens = torch.tensor([0, 0, 4]), torch.tensor([3, 10, 0])
    expected = F.log_softmax(logits, -1)[source, tokens]
    torch.testing.assert_close(gathered_log_softmax(logits, source, tokens), expected)
    assert torch.autograd.gradcheck(lambda x: gathered_log_softmax(x, source, tokens), (logits.requires_grad_(),))
