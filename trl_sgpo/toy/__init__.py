"""The built-in world: a character-level tokenizer, a tiny model and verifiable string tasks."""

from .model import build_tiny_model
from .tokenizer import build_char_tokenizer


__all__ = ["build_char_tokenizer", "build_tiny_model"]
