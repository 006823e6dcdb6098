"""The built-in world: a character-level tokenizer, a tiny model, verifiable string tasks and their checker."""

from .model import TOY_CHECKPOINT_DIR, build_tiny_model, load_toy_model, toy_checkpoint_metadata
from .tokenizer import build_char_tokenizer
from .world import (
    TOY_IMPROVER_INSTRUCTION,
    TOY_IMPROVER_TEMPLATE,
    TOY_METRIC_PATH,
    TOY_REFERENCE_AWARE_TEMPLATE,
    evaluate_model,
    generate_completions,
    make_dataset,
    pass_at_k,
    score,
)


__all__ = [
    "TOY_CHECKPOINT_DIR",
    "TOY_IMPROVER_INSTRUCTION",
    "TOY_IMPROVER_TEMPLATE",
    "TOY_METRIC_PATH",
    "TOY_REFERENCE_AWARE_TEMPLATE",
    "build_char_tokenizer",
    "build_tiny_model",
    "evaluate_model",
    "generate_completions",
    "load_toy_model",
    "make_dataset",
    "pass_at_k",
    "score",
    "toy_checkpoint_metadata",
]
