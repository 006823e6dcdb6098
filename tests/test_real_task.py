"""The real-model benchmark's task (benchmarks/real/task.py): its checkers, its splits and its SFT references."""

import math

import pytest

from benchmarks.real.task import (
    HELD_OUT_FAMILY,
    IMPERFECT_SHARE,
    TRAIN_FAMILIES,
    Constraint,
    Prompt,
    _serialise,
    all_prompts,
    make_splits,
    prompt_from_json,
)


# family -> (value, an answer that satisfies it, one that does not)
CASES = {
    "lowercase": (None, "apple is a fruit.", "Apple is a fruit."),
    "uppercase": (None, '"APPLE, PEAR."', "APPLE, pear."),
    "end_word": ("done", "Apple, pear done.", "Done: apple, pear."),
    "no_commas": (None, "Apple and pear.", "Apple, pear."),
    "quotes": (None, '"Apple is a fruit."', '"Apple" is a "fruit"'),  # two quoted parts, not one
    "items": (3, "Apple, pear, plum.", "Apple, pear, plum, fig."),
    "keyword": ("nice", "A pear is nice.", "A pear is nicer."),
}


@pytest.mark.parametrize("family", sorted(CASES))
def test_each_constraint_passes_a_right_answer_and_fails_a_wrong_one(family):
    value, right, wrong = CASES[family]
    constraint = Constraint(family, value)
    assert constraint.holds(right)
    assert not constraint.holds(wrong)


def test_every_family_has_a_case_and_no_answer_without_letters_passes_a_case_constraint():
    assert set(CASES) == {*TRAIN_FAMILIES, HELD_OUT_FAMILY}
    for family in ("lowercase", "uppercase"):
        assert not Constraint(family).holds("123.")
    assert not Constraint("items", 2).holds("apple,")  # an empty item is not an item


def test_a_correct_answer_meets_every_constraint_and_names_an_item_of_the_category():
    prompt = Prompt("fruit", False, (Constraint("lowercase"), Constraint("end_word", "done")))
    instructions = "Write your whole answer in lowercase letters. End your answer with the word 'done'."
    assert prompt.text == f"Name a fruit. {instructions}"
    assert prompt.correct("apple done.")
    assert not prompt.correct("a car done.")  # constraints met, the request not answered
    assert not prompt.correct("Apple done.")
    assert prompt.partial_credit("Apple done.") == pytest.approx(2 / 3)
    assert prompt.partial_credit("Car.") == 0.0
    assert Prompt("animal", False, ()).request == "Name an animal."


def test_prompts_combine_one_or_two_compatible_constraints_and_items_only_with_lists():
    prompts = all_prompts(TRAIN_FAMILIES)
    assert len({p.text for p in prompts}) == len(prompts)  # distinct
    for prompt in prompts:
        families = [c.family for c in prompt.constraints]
        assert 1 <= len(families) <= 2 and len(set(families)) == len(families)
        assert {"lowercase", "uppercase"} - set(families)  # never both
        assert "items" not in families or prompt.plural
        assert HELD_OUT_FAMILY not in families


def test_splits_are_disjoint_and_the_held_out_family_appears_only_in_its_own_set():
    splits = make_splits()
    texts = {name: {row.prompt.text for row in rows} for name, rows in splits.items()}
    assert all(len(texts[name]) == len(rows) for name, rows in splits.items())  # no prompt twice in a split
    names = list(texts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not texts[a] & texts[b], (a, b)
    for name, rows in splits.items():
        has_held_out = [any(c.family == HELD_OUT_FAMILY for c in row.prompt.constraints) for row in rows]
        assert all(has_held_out) if name == "held_out" else not any(has_held_out)
    assert make_splits()["test"] == splits["test"]  # seeded: the same splits every time


def test_references_satisfy_their_prompts_except_the_imperfect_share_which_misses_exactly_one_constraint():
    splits = make_splits()
    train = splits["train"]
    imperfect = [row for row in train if row.imperfect]
    share = len(imperfect) / len(train)
    # Each row is imperfect with probability IMPERFECT_SHARE: the share lies within 4 binomial sigmas of it.
    assert abs(share - IMPERFECT_SHARE) < 4 * math.sqrt(IMPERFECT_SHARE * (1 - IMPERFECT_SHARE) / len(train))
    for row in train:
        verdicts = row.prompt.checks(row.reference)
        assert verdicts[0], row  # every reference answers the request
        assert verdicts[1:].count(False) == (1 if row.imperfect else 0), row
    for name in ("validation", "test", "held_out"):
        assert all(row.prompt.correct(row.reference) and not row.imperfect for row in splits[name])


def test_the_task_column_round_trips_to_the_same_prompt():
    for row in make_splits()["held_out"][:20]:
        assert prompt_from_json(_serialise(row.prompt)) == row.prompt
