"""What a user brings to the command line, built locally: saved models with their tokenizers, and data files.

Two architectures (Llama-like, GPT-2-like) and two tokenizer kinds (the character-level one of `trl_sgpo.toy`, and a
word-level one built here with `tokenizers`), each with a chat template, saved with `save_pretrained` exactly as a
user's fine-tuned model would be. The data is the same small task in every format the command line reads.
"""

import json
from pathlib import Path

import pandas as pd
import torch
from datasets import Dataset, DatasetDict
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from trl_sgpo.config import DEFAULT_IMPROVER_TEMPLATE
from trl_sgpo.toy import build_char_tokenizer, build_tiny_model


WORDS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"]
WORD_SPECIAL_TOKENS = ["<pad>", "<unk>", "</s>", "<|user|>", "<|assistant|>", "<|end|>"]
WORD_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|user|> {{ message['content'] }} <|end|> "
    "{% elif message['role'] == 'assistant' %}<|assistant|> {{ message['content'] }} </s> "
    "{% else %}{{ message['content'] }} <|end|> {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def build_word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer (whitespace and punctuation split) over the task's words and the default template's."""
    text = " ".join(WORDS) + " reverse swap = : " + DEFAULT_IMPROVER_TEMPLATE
    backend_words = Tokenizer(models.WordLevel({}, unk_token="<unk>"))
    backend_words.pre_tokenizer = pre_tokenizers.Whitespace()
    pieces = sorted({piece for piece, _ in backend_words.pre_tokenizer.pre_tokenize_str(text)})
    vocab = {token: index for index, token in enumerate(WORD_SPECIAL_TOKENS + pieces)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="</s>",
        additional_special_tokens=WORD_SPECIAL_TOKENS[3:],
    )
    tokenizer.chat_template = WORD_CHAT_TEMPLATE
    return tokenizer


def build_gpt2(tokenizer, hidden_size: int = 32, num_layers: int = 2) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 whose vocabulary and special tokens match ``tokenizer``."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=hidden_size,
        n_layer=num_layers,
        n_head=2,
        n_positions=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_models(root: Path) -> dict[str, Path]:
    """``llama-char`` and ``gpt2-word`` folders, each a model and its tokenizer saved with `save_pretrained`."""
    char_tokenizer, word_tokenizer = build_char_tokenizer(), build_word_tokenizer()
    folders = {
        "llama-char": (build_tiny_model(char_tokenizer, hidden_size=32, num_layers=2, num_heads=2), char_tokenizer),
        "gpt2-word": (build_gpt2(word_tokenizer), word_tokenizer),
    }
    paths = {}
    for name, (model, tokenizer) in folders.items():
        paths[name] = root / name
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    return paths


def task(index: int) -> tuple[str, str]:
    """(request, reference) of the index-th row: swap two words."""
    first, second = WORDS[index % len(WORDS)], WORDS[(index + 3) % len(WORDS)]
    return f"swap {first} {second}", f"{second} {first}"


def standard_rows(count: int) -> list[dict]:
    return [
        {"prompt": f"{request} =", "completion": f" {reference}"} for request, reference in map(task, range(count))
    ]


def conversational_rows(count: int) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": request}],
            "completion": [{"role": "assistant", "content": reference}],
        }
        for request, reference in map(task, range(count))
    ]


def messages_rows(count: int) -> list[dict]:
    """TRL's conversational language-modeling format, with a system turn first and a string 'prompt' column beside
    (as ultrachat_200k has)."""
    return [
        {
            "prompt": request,
            "messages": [
                {"role": "system", "content": "You swap words."},
                {"role": "user", "content": request},
                {"role": "assistant", "content": reference},
            ],
        }
        for request, reference in map(task, range(count))
    ]


def save_data(root: Path, count: int = 8) -> dict[str, Path]:
    """One data set per format the command line reads; returns the path of each by name."""
    paths = {
        "jsonl": root / "data.jsonl",
        "json_messages": root / "messages.json",
        "csv": root / "data.csv",
        "parquet": root / "data.parquet",
        "eval_csv": root / "eval.csv",
        "saved": root / "saved_dataset",
    }
    with open(paths["jsonl"], "w", encoding="utf-8") as handle:
        for row in conversational_rows(count):
            handle.write(json.dumps(row) + "\n")
    paths["json_messages"].write_text(json.dumps(messages_rows(count)), encoding="utf-8")
    pd.DataFrame(standard_rows(count)).to_csv(paths["csv"], index=False)
    pd.DataFrame(standard_rows(count)).to_parquet(paths["parquet"])
    pd.DataFrame(standard_rows(2)).to_csv(paths["eval_csv"], index=False)
    splits = {"train": conversational_rows(count), "test": conversational_rows(2)}
    DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items()}).save_to_disk(paths["saved"])
    return paths
