"""The improver role without a model: templates, edit scripts, targets and the outlier filter."""

from types import SimpleNamespace

import pytest

from trl_sgpo.method.improver import (
    apply_edits,
    edit_distance,
    edit_script,
    fill_template,
    improver_target,
    improver_targets,
    plausible_keeps,
    render_improver_prompt,
    select_targets,
    tukey_keep,
    validate_template,
)
from trl_sgpo.records import Completion
from trl_sgpo.toy import build_char_tokenizer


TEMPLATE = "Q: {prompt}\nA: {response}\nBetter:"


def test_fill_template_leaves_braces_in_texts_alone():
    assert fill_template(TEMPLATE, "say {response}", "x{prompt}") == "Q: say {response}\nA: x{prompt}\nBetter:"


@pytest.mark.parametrize("template", ["{prompt} only", "only {response}", "neither"])
def test_template_without_a_field_is_rejected(template):
    with pytest.raises(ValueError, match="improver template has no"):
        validate_template(template)


def test_string_prompt_is_rendered_as_a_user_turn():
    tokenizer = build_char_tokenizer()
    text = render_improver_prompt(TEMPLATE, "reverse abc", "cbb", tokenizer)
    assert text == "<|user|>Q: reverse abc\nA: cbb\nBetter:<|end|><|assistant|>"


def test_conversational_prompt_keeps_earlier_turns_and_fills_the_last_user_message():
    tokenizer = build_char_tokenizer()
    prompt = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "reverse abc"},
    ]
    text = render_improver_prompt(TEMPLATE, prompt, "cbb", tokenizer)
    assert text == (
        "<|system|>be brief<|end|><|user|>hi<|end|><|assistant|>hello</s>"
        "<|user|>Q: reverse abc\nA: cbb\nBetter:<|end|><|assistant|>"
    )


def test_without_chat_template_the_filled_text_is_the_prompt():
    tokenizer = build_char_tokenizer(with_chat_template=False)
    assert render_improver_prompt(TEMPLATE, "reverse abc", "cbb", tokenizer) == "Q: reverse abc\nA: cbb\nBetter:"


def test_callable_template_may_return_text_or_messages():
    tokenizer = build_char_tokenizer()
    as_text = render_improver_prompt(lambda p, r: f"{p}|{r}", "x", "y", tokenizer)
    assert as_text == "<|user|>x|y<|end|><|assistant|>"
    as_messages = render_improver_prompt(
        lambda p, r: [{"role": "system", "content": "fix"}, {"role": "user", "content": r}], "x", "y", tokenizer
    )
    assert as_messages == "<|system|>fix<|end|><|user|>y<|end|><|assistant|>"


@pytest.mark.parametrize(
    "draft, reference",
    [
        ([1, 2, 3], [1, 2, 3]),
        ([1, 2, 3], [1, 5, 3]),
        ([1, 2, 3], [1, 3]),
        ([1, 3], [1, 2, 3, 4]),
        ([], [7, 8]),
        ([7, 8], []),
        ([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]),
    ],
)
def test_applying_the_whole_edit_script_gives_the_reference(draft, reference):
    assert apply_edits(draft, edit_script(draft, reference)) == reference


def test_edit_script_of_a_substitution_and_an_insertion():
    operations = edit_script([1, 2, 3], [1, 9, 3, 4])
    assert [(op.kind, op.source_index, op.token) for op in operations] == [
        ("substitute", 1, 9),
        ("insert", 3, 4),
    ]
    assert edit_distance([1, 2, 3], [1, 9, 3, 4]) == 2


def test_interpolate_applies_the_first_fraction_of_edits():
    draft, reference = [1, 2, 3, 4], [5, 6, 7, 8]  # four substitutions
    assert improver_target("interpolate", draft, reference, alpha=0.5) == ([5, 6, 3, 4], 2)
    assert improver_target("interpolate", draft, reference, alpha=0.25) == ([5, 2, 3, 4], 1)
    assert improver_target("interpolate", draft, reference, alpha=1.0) == (reference, 4)
    assert improver_target("interpolate", draft, reference, alpha=0.0) == (draft, 0)
    # any alpha > 0 moves a wrong draft by at least one token
    assert improver_target("interpolate", draft, reference, alpha=0.01) == ([5, 2, 3, 4], 1)


def test_reference_target_is_the_reference_with_the_full_edit_count():
    assert improver_target("reference", [1, 2, 3], [1, 9, 3, 4]) == ([1, 9, 3, 4], 2)
    assert improver_target("reference", [1, 2], [1, 2]) == ([1, 2], 0)


def test_unknown_strategy_is_rejected():
    with pytest.raises(ValueError, match="Unknown improver target strategy 'copy'"):
        improver_target("copy", [1], [2])


def test_tukey_fences_on_a_hand_computed_batch():
    # sorted [1, 2, 3, 4, 5, 20]: Q1 = 2.25, Q3 = 4.75 (linear, inclusive), IQR = 2.5, fences [-1.5, 8.5]
    assert tukey_keep([1, 2, 3, 4, 5, 20], k=1.5) == [True, True, True, True, True, False]
    # sorted [0, 2, 2, 3, 3, 3, 4, 100]: Q1 = 2, Q3 = 3.25; k = 0 keeps [2, 3.25]
    assert tukey_keep([2, 2, 3, 3, 3, 4, 100, 0], k=0.0) == [True, True, True, True, True, False, False, False]
    assert tukey_keep([1, 50, 100], k=0.0) == [True, True, True]  # under 4 values: no fences


def test_select_targets_drops_unchanged_then_outliers():
    sizes = [0, 2, 3, 3, 4, 40]
    assert select_targets(sizes) == [False, True, True, True, True, False]
    assert select_targets(sizes, filter_outliers=False) == [False, True, True, True, True, True]
    assert select_targets(sizes, drop_unchanged=False, filter_outliers=False) == [True] * 6


# ------------------------------------------------------------------------------------------ keep_plausible


def _settings(**overrides) -> SimpleNamespace:
    values = dict(
        improver_target="keep_plausible",
        improver_alpha=0.5,
        improver_drop_unchanged=False,
        improver_filter_outliers=True,
        improver_outlier_k=1.5,
    )
    return SimpleNamespace(**{**values, **overrides})


def test_keep_plausible_keeps_a_right_draft_and_moves_a_broken_one():
    # Many right answers: the right draft "Paris is the capital." differs from its reference "The capital is Paris.",
    # and the initial policy finds it as plausible per token; the broken draft is less plausible than its reference.
    right, reference_1 = Completion([5, 6, 7, 8], True), Completion([8, 7, 6, 5], True)
    broken, reference_2 = Completion([9, 9, 9], True), Completion([1, 2], True)
    cut = Completion([3, 4], False)  # cut at the length limit: unfinished, never kept, however plausible
    drafts, references = [right, broken, cut], [reference_1, reference_2, Completion([3], True)]
    plausibility = ([-0.4, -3.0, -0.1], [-0.5, -0.6, -2.0])  # mean token log-probs: drafts, references
    targets, keep, sizes = improver_targets(drafts, references, _settings(), plausibility)
    assert [t.token_ids for t in targets] == [[5, 6, 7, 8], [1, 2], [3]]
    assert sizes[0] == 0 and sizes[1] > 0 and all(keep)
    # the same right draft under the reference strategy would be swapped for the reference
    swapped, _, _ = improver_targets(drafts, references, _settings(improver_target="reference"))
    assert swapped[0].token_ids == reference_1.token_ids
    assert plausible_keeps(drafts, *plausibility) == [True, False, False]
    with pytest.raises(ValueError, match="needs the initial policy's log-probabilities"):
        improver_targets(drafts, references, _settings())


def test_keep_plausible_filters_moved_targets_by_their_plausibility_gain():
    # Five drafts moved to their references with gains 1, 1.1, 1.2, 1.3 and 9 (a draft far less plausible than its
    # reference: a whole rewrite, not an incremental step), and one kept draft, which the fences never judge.
    drafts = [Completion([index + 10], True) for index in range(6)]
    references = [Completion([index + 20], True) for index in range(6)]
    draft_logps, reference_logps = [-2.0, -2.1, -2.2, -2.3, -10.0, -0.1], [-1.0] * 5 + [-0.5]
    _, keep, sizes = improver_targets(drafts, references, _settings(), (draft_logps, reference_logps))
    assert keep == [True, True, True, True, False, True] and sizes[5] == 0
    _, keep, _ = improver_targets(
        drafts, references, _settings(improver_filter_outliers=False), (draft_logps, reference_logps)
    )
    assert all(keep)
