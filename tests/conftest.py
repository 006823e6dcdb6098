"""Shared fixtures: a character-level tokenizer and tiny models built locally (never from the Hub)."""

import os


os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402

from trl_sgpo import SGPOConfig  # noqa: E402
from trl_sgpo.toy import build_char_tokenizer, build_tiny_model  # noqa: E402
from trl_sgpo.toy.tokenizer import SPECIAL_TOKENS  # noqa: E402


# Tiny models run faster on one thread, and two test workers on two cores must not fight over OpenMP threads.
torch.set_num_threads(1)

WORDS = ["abc", "hello", "world", "qwerty", "zyx", "mnop", "abcd", "xyz", "lemon", "kiwi", "grape", "plum"]
SHORT_TEMPLATE = "{prompt}\ndraft: {response}\nfix:"


@pytest.fixture
def tokenizer():
    return build_char_tokenizer()


def tiny_model(tokenizer, seed: int = 0):
    return build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=seed)


@pytest.fixture
def model(tokenizer):
    return tiny_model(tokenizer)


def conversational_dataset(num_rows: int = 8) -> Dataset:
    words = [WORDS[i % len(WORDS)] for i in range(num_rows)]
    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": f"reverse {word}"}],
                "completion": [{"role": "assistant", "content": word[::-1]}],
            }
            for word in words
        ]
    )


def standard_dataset(num_rows: int = 8) -> Dataset:
    words = [WORDS[i % len(WORDS)] for i in range(num_rows)]
    return Dataset.from_list([{"prompt": f"reverse {word} =", "completion": f" {word[::-1]}"} for word in words])


@pytest.fixture
def dataset():
    return conversational_dataset()


def make_config(tmp_path, **overrides) -> SGPOConfig:
    """A CPU config for a few fast steps; every completion ends with EOS (forced at the length limit)."""
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=4,
        improver_warmup_steps=0,  # tests set their schedule; the default Step 1 has its own tests
        logging_steps=1,
        max_new_tokens=6,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        improver_template=SHORT_TEMPLATE,
        generation_kwargs={"forced_eos_token_id": SPECIAL_TOKENS.index("</s>")},
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,  # no progress bars left open by tests that stop training on purpose
    )
    settings.update(overrides)
    return SGPOConfig(**settings)
