"""Shared fixtures: a character-level tokenizer and tiny models built locally (never from the Hub).

The factories behind them (tiny models, datasets, configs) are in `tests/helpers.py`.
"""

import os


os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

from trl_sgpo.toy import build_char_tokenizer  # noqa: E402

from .helpers import conversational_dataset, tiny_model  # noqa: E402


# Tiny models run faster on one thread, and two test workers on two cores must not fight over OpenMP threads.
torch.set_num_threads(1)


@pytest.fixture
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture
def model(tokenizer):
    return tiny_model(tokenizer)


@pytest.fixture
def dataset():
    return conversational_dataset()
