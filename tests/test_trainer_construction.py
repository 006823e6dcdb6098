"""Building the trainer: bad arguments and data fail before any model work; the saved model card."""

import pytest
from datasets import Dataset

from trl_sgpo import SGPOTrainer

from .conftest import conversational_dataset, make_config, tiny_model


def _build(tmp_path, tokenizer, dataset=None, **kwargs):
    return SGPOTrainer(
        model=tiny_model(tokenizer),
        args=make_config(tmp_path),
        train_dataset=dataset if dataset is not None else conversational_dataset(4),
        processing_class=tokenizer,
        **kwargs,
    )


def test_reward_funcs_are_refused(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="takes no `reward_funcs`"):
        _build(tmp_path, tokenizer, reward_funcs=lambda **kw: [0.0])


@pytest.mark.parametrize(
    "rows, error, message",
    [
        ([{"prompt": "a"}], ValueError, "no 'completion' column"),
        ([{"question": "a", "completion": "b"}], ValueError, "no 'prompt' column"),
        ([{"prompt": "", "completion": "b"}], ValueError, "row 0: the prompt is empty"),
        ([{"prompt": "a", "completion": " "}], ValueError, "completion \\(SFT reference\\) is empty"),
        ([{"prompt": "a", "completion": [{"role": "assistant", "content": "b"}]}], TypeError, "prompt is str"),
        (
            [{"prompt": [{"role": "robot", "content": "a"}], "completion": [{"role": "assistant", "content": "b"}]}],
            ValueError,
            "role 'robot' is not allowed",
        ),
        (
            [{"prompt": [{"role": "user", "content": "a"}], "completion": [{"role": "user", "content": "b"}]}],
            ValueError,
            "role 'user' is not allowed",
        ),
        (
            [
                {"prompt": [{"role": "user", "content": "a"}], "completion": [{"role": "assistant", "content": "b"}]},
                {"prompt": [{"role": "assistant", "content": "a"}], "completion": [{"role": "assistant", "content": "b"}]},
            ],
            ValueError,
            "row 1: a conversational prompt must end with a user message",
        ),
    ],
)
def test_bad_data_is_rejected_at_construction(tmp_path, tokenizer, rows, error, message):
    with pytest.raises(error, match=message):
        _build(tmp_path, tokenizer, dataset=Dataset.from_list(rows))


def test_conversational_data_needs_a_chat_template(tmp_path, tokenizer):
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        _build(tmp_path, tokenizer)


def test_saved_model_has_an_sgpo_model_card(tmp_path, tokenizer):
    trainer = _build(tmp_path, tokenizer)
    trainer.save_model(str(tmp_path / "final"))
    card = (tmp_path / "final" / "README.md").read_text()
    assert "- trl" in card and "- sgpo" in card
    assert "@article{lee2025sgpo" in card and "2507.20181" in card
    assert (tmp_path / "final" / "model.safetensors").exists()
    assert (tmp_path / "final" / "tokenizer_config.json").exists()
