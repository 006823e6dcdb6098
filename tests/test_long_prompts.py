"""Rows whose prompt does not fit (`long_prompts`): refused, dropped or cut from the left, counted before training."""

import pytest
from datasets import Dataset, IterableDataset
from transformers.testing_utils import CaptureLogger

from trl_sgpo import SGPOTrainer
from trl_sgpo.data.formats import prepare_training_data
from trl_sgpo.data.prompt_lengths import (
    PromptBudget,
    fit_prompts,
    logger,
    prompt_budget,
    prompt_tokens,
    truncate_prompt,
)
from trl_sgpo.toy.tokenizer import SPECIAL_TOKENS

from .helpers import make_config, tiny_model


BUDGET = PromptBudget(max_length=120, template_tokens=20, max_new_tokens=30, improver_tokens=30)  # 40 tokens


def _rows(prompts: list) -> Dataset:
    completion = [{"role": "assistant", "content": "cba"}] if isinstance(prompts[0], list) else " cba"
    return Dataset.from_list([{"prompt": prompt, "completion": completion} for prompt in prompts])


def _chat(*contents: str, system: str | None = None) -> list[dict]:
    roles = ["user", "assistant"] * len(contents)
    messages = [{"role": role, "content": text} for role, text in zip(roles, contents)]
    return ([{"role": "system", "content": system}] if system else []) + messages


def test_the_default_refuses_and_names_the_row_the_arithmetic_and_the_options(tokenizer):
    dataset = _rows(["reverse abc", "x" * 80, "reverse ab", "y" * 90])
    with pytest.raises(ValueError) as caught:
        fit_prompts(dataset, tokenizer, BUDGET)
    message = str(caught.value)
    assert "train_dataset row 1: the prompt has 80 tokens, more than the 40 that fit" in message
    assert BUDGET.arithmetic() in message and "2 of 4 rows do not fit" in message
    assert "long_prompts='drop'" in message and "long_prompts='truncate'" in message


def test_drop_skips_exactly_the_long_rows_and_says_how_many(tokenizer):
    prompts = ["reverse abc", "x" * 80, "reverse ab", "y" * 90, "z" * 40]  # 40 tokens is exactly what fits
    with CaptureLogger(logger) as captured:
        kept = fit_prompts(_rows(prompts), tokenizer, BUDGET, mode="drop")
    assert kept["prompt"] == ["reverse abc", "reverse ab", "z" * 40]
    assert "2 of 5 train_dataset rows do not fit: a prompt may have 40 tokens" in captured.out
    assert "longest prompt 90: dropped" in captured.out


def test_truncate_drops_the_earliest_turns_first_and_keeps_the_system_message_and_the_reference(tokenizer):
    long_chat = _chat("a" * 30, "b" * 30, "reverse abc", system="sys")
    dataset = _rows([long_chat, _chat("reverse ab")])
    with CaptureLogger(logger) as captured:
        fitted = fit_prompts(dataset, tokenizer, BUDGET, mode="truncate")
    assert "1 of 2 train_dataset rows" in captured.out and "cut from the left" in captured.out
    assert fitted[0]["prompt"] == [long_chat[0], long_chat[-1]]  # system message and the last user turn
    assert prompt_tokens(fitted[0]["prompt"], tokenizer) <= BUDGET.available
    assert fitted[1]["prompt"] == _chat("reverse ab")  # rows that fit are untouched
    assert fitted["completion"] == dataset["completion"]


def test_truncate_cuts_a_single_long_message_from_the_left_to_exactly_what_fits(tokenizer):
    text = "".join(chr(ord("a") + i % 26) for i in range(100))
    for prompt in (text, _chat(text)):
        cut = truncate_prompt(prompt, tokenizer, BUDGET.available)
        cut_text = cut if isinstance(cut, str) else cut[0]["content"]
        assert text.endswith(cut_text) and cut_text  # the end of the prompt, where the question usually is
        assert prompt_tokens(cut, tokenizer) <= BUDGET.available
        one_more = text[-len(cut_text) - 1 :]  # a character-level tokenizer: one more token would not fit
        longer = one_more if isinstance(prompt, str) else _chat(one_more)
        assert prompt_tokens(longer, tokenizer) > BUDGET.available


def test_a_stream_is_dropped_or_cut_as_it_is_read(tokenizer):
    prompts = ["reverse abc", "x" * 80, "reverse ab"]
    stream = IterableDataset.from_generator(lambda: iter(_rows(prompts)))
    assert [row["prompt"] for row in fit_prompts(stream, tokenizer, BUDGET, mode="drop")] == [prompts[0], prompts[2]]
    cut = [row["prompt"] for row in fit_prompts(stream, tokenizer, BUDGET, mode="truncate")]
    assert cut[1] == "x" * BUDGET.available and cut[0] == prompts[0]
    with pytest.raises(ValueError, match="row 1: the prompt has 80 tokens"):
        fit_prompts(stream, tokenizer, BUDGET)


def test_the_trainer_trains_on_the_fitted_rows(tmp_path, tokenizer):
    rows = [{"prompt": p, "completion": " cba"} for p in ["reverse abc =", "x" * 300, "reverse ab =", "reverse a ="]]
    args = make_config(tmp_path, long_prompts="drop", max_length=160, max_steps=1, per_device_train_batch_size=2)
    budget = prompt_budget(args, tokenizer)
    assert budget.available < 300 < budget.max_length + 200
    trainer = SGPOTrainer(
        model=tiny_model(tokenizer), args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    assert trainer.train_dataset["prompt"] == ["reverse abc =", "reverse ab =", "reverse a ="]
    trainer.train()


def test_prepare_training_data_needs_no_model_and_resolves_auto(tmp_path, tokenizer):
    args = make_config(tmp_path, improver_format="auto", improver_instruction="fix it")
    data = Dataset.from_list([{"messages": _chat("reverse abc", "cba")}])
    resolved, train, _ = prepare_training_data(args, tokenizer, data)
    assert train.column_names == ["prompt", "completion"] and resolved.improver_format in ("next_turn", "template")
    assert args.improver_format == "auto"  # the caller's config is not changed behind its back


def test_an_unknown_mode_is_refused_when_the_config_is_built(tmp_path):
    with pytest.raises(ValueError, match="long_prompts must be one of"):
        make_config(tmp_path, long_prompts="cut")


# ------------------------------------------------------------------------ references longer than the rewrite room


def test_a_long_reference_leaves_its_prompt_less_room_by_the_improvers_arithmetic():
    # The improver's target is the reference: template 20 + draft 30 + a 50-token target take 100 of 120.
    assert BUDGET.limit_for(10) == BUDGET.available == 40  # a short reference fits in the reserved rewrite room
    assert BUDGET.limit_for(50) == 120 - 20 - 30 - 50
    shown = PromptBudget(120, 20, 30, 30, shows_reference=True)  # a reference-aware template shows it as well
    assert shown.limit_for(10) == 120 - 20 - 30 - 10 - 30 and shown.limit_for(50) == 120 - 20 - 30 - 50 - 50
    spin = PromptBudget(120, 0, 30, 0)  # no improver: the policy's pass scores prompt + reference
    assert spin.limit_for(10) == 90 and spin.limit_for(50) == 70
    assert BUDGET.arithmetic(50) == (
        "max_length 120 - improver template 20 - max_new_tokens 30 - the improver's target, up to the reference, 50 "
        "(more than improver_max_new_tokens 30) = 20"
    )


def _with_references(pairs: list[tuple[str, str]]) -> Dataset:
    return Dataset.from_list([{"prompt": prompt, "completion": completion} for prompt, completion in pairs])


def test_a_row_whose_reference_does_not_fit_is_refused_up_front_with_its_arithmetic(tokenizer):
    long_reference = " " + "c" * 59  # 60 characters + the end of turn = 61 tokens: 120 - 20 - 30 - 61 = 9 left
    dataset = _with_references([("reverse ab", " ba"), ("reverse abc", long_reference)])
    with pytest.raises(ValueError) as caught:
        fit_prompts(dataset, tokenizer, BUDGET)
    message = str(caught.value)
    assert "row 1: the prompt has 11 tokens and the reference 61; at most 9 fit beside it" in message
    assert "the improver's target, up to the reference, 61" in message and "1 of 2 rows do not fit" in message
    assert "improver_max_new_tokens, or" not in message  # a shorter rewrite budget would not shorten the target
    with CaptureLogger(logger) as captured:
        cut = fit_prompts(dataset, tokenizer, BUDGET, mode="truncate")
    assert cut["prompt"] == ["reverse ab", "reverse abc"[-9:]] and cut["completion"] == dataset["completion"]
    assert "1 of them for a long reference" in captured.out
    assert fit_prompts(dataset, tokenizer, BUDGET, mode="drop")["prompt"] == ["reverse ab"]
    hopeless = _with_references([("reverse ab", " ba"), ("reverse abc", " " + "c" * 80)])  # 82 > 120 - 20 - 30
    with pytest.raises(ValueError, match="no prompt fits beside it.*cutting their prompts cannot help"):
        fit_prompts(hopeless, tokenizer, BUDGET, mode="truncate")
    with pytest.raises(ValueError, match="do not fit. Raise max_length, or set long_prompts='drop'") as caught:
        fit_prompts(hopeless, tokenizer, BUDGET)
    assert "truncate" not in str(caught.value)  # cutting the prompt cannot help that row


def test_a_run_with_long_references_scores_no_sequence_over_max_length(tmp_path, tokenizer):
    # Before the check counted references, this data passed (its prompts fit the reserved room) and every improver
    # step cut the long targets' prompts from the left at max_length, with only a warning during training.
    from trl_sgpo.step import scoring

    pairs = [("reverse abc =", " " + "cba" * 30), ("reverse ab =", " ba"), ("reverse a =", " a"), ("x" * 60, " x")]
    # Drafts of plain characters: a random model's special tokens would decode to text that tokenizes longer.
    plain = {"forced_eos_token_id": 2, "suppress_tokens": [i for i in range(len(SPECIAL_TOKENS)) if i != 2]}
    args = make_config(
        tmp_path,
        long_prompts="truncate",
        max_length=120,
        max_steps=2,
        per_device_train_batch_size=2,
        generation_kwargs=plain,
    )
    assert prompt_budget(args, tokenizer).available >= 60  # every prompt fits the room reserved for a rewrite
    trainer = SGPOTrainer(
        model=tiny_model(tokenizer), args=args, train_dataset=_with_references(pairs), processing_class=tokenizer
    )
    assert len(trainer.train_dataset[0]["prompt"]) < len("reverse abc =")  # cut so the 91-token target fits
    with CaptureLogger(scoring.logger) as captured:
        trainer.train()
    assert "longer than max_length" not in captured.out
