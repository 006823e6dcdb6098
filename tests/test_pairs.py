"""The degenerate-pair filter on hand-made pairs."""

from trl_sgpo.method.pairs import filter_pairs
from trl_sgpo.records import Completion


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
