"""Smaller things a new user meets: warnings, default names, the model card of a model object, messages data."""

import warnings

import pytest
from datasets import Dataset

from trl_sgpo import SGPOConfig, SGPOTrainer

from .helpers import conversational_dataset, make_config, tiny_model


def test_sgpo_config_emits_no_deprecation_warning_of_its_own(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = SGPOConfig(output_dir=str(tmp_path), report_to="none")
    assert not [w for w in caught if "deprecated" in str(w.message)], [str(w.message) for w in caught]
    assert config.gradient_checkpointing is False  # CPU: off, readable under the old name too


def test_a_micro_batch_below_four_warns_that_the_outlier_filter_never_acts(tmp_path):
    with pytest.warns(UserWarning, match="outlier filter .* never acts"):
        SGPOConfig(output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no warning where the filter is off or can act
        SGPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=1, improver_filter_outliers=False)
        SGPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4)


def test_without_args_a_model_object_names_the_output_dir_after_its_class(tmp_path, tokenizer, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = SGPOTrainer(
        model=tiny_model(tokenizer), train_dataset=conversational_dataset(4), processing_class=tokenizer
    )
    assert trainer.args.output_dir == "LlamaForCausalLM-SGPO"


def test_the_card_of_a_model_object_has_no_link_to_none(tmp_path, tokenizer):
    trainer = SGPOTrainer(
        model=tiny_model(tokenizer),
        args=make_config(tmp_path),
        train_dataset=conversational_dataset(4),
        processing_class=tokenizer,
    )
    trainer.save_model()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "[None]" not in card and 'model="None"' not in card
    assert "fine-tuned version of a model built in Python" in card
    assert "github.com/trl-sgpo" not in card  # pyproject.toml declares no such URL


def test_a_messages_dataset_becomes_prompt_completion_with_the_last_assistant_turn_as_reference(tmp_path, tokenizer):
    rows = [
        {
            "prompt": "reverse abc",  # ultrachat_200k keeps the first request as a string beside 'messages'
            "messages": [
                {"role": "user", "content": "reverse ab"},
                {"role": "assistant", "content": "ba"},
                {"role": "user", "content": "reverse abc"},
                {"role": "assistant", "content": "cba"},
            ],
        }
    ] * 4
    trainer = SGPOTrainer(
        model=tiny_model(tokenizer),
        args=make_config(tmp_path, max_steps=2),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows[:2]),
        processing_class=tokenizer,
    )
    row = trainer.train_dataset[0]
    assert row["completion"] == [{"role": "assistant", "content": "cba"}]
    assert [m["content"] for m in row["prompt"]] == ["reverse ab", "ba", "reverse abc"]
    assert "messages" not in trainer.train_dataset.column_names
    trainer.train()
    assert trainer.state.global_step == 2 and "eval_loss" in trainer.evaluate()
