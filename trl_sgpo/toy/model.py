"""A tiny Llama-shaped causal LM built from a config (no Hub), sized for CPU training, and the shipped checkpoint.

``load_toy_model()`` loads the starting policy shipped in ``TOY_CHECKPOINT_DIR`` (built by
``python -m trl_sgpo.toy.build_checkpoint``); ``toy_checkpoint_metadata()`` reads how it was built and its held-out
scores.
"""

import json
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)


TOY_CHECKPOINT_DIR = Path(__file__).parent / "checkpoint"


def build_tiny_model(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    max_positions: int = 512,
    seed: int = 0,
) -> LlamaForCausalLM:
    """Build a randomly initialised Llama model whose vocabulary and special tokens match ``tokenizer``."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def load_toy_model(
    checkpoint_dir: str | Path = TOY_CHECKPOINT_DIR,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """Load the toy world's starting policy and its tokenizer from a local directory (the shipped one by default)."""
    model = LlamaForCausalLM.from_pretrained(checkpoint_dir)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    return model, tokenizer


def toy_checkpoint_metadata(checkpoint_dir: str | Path = TOY_CHECKPOINT_DIR) -> dict[str, Any]:
    """The ``world.json`` of a checkpoint: its build config and its scores on the fixed held-out sets."""
    return json.loads((Path(checkpoint_dir) / "world.json").read_text())
