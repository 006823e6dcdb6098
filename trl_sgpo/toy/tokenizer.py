"""A character-level tokenizer with a chat template, built locally (no Hub).

Every printable ASCII character is one token, so a tiny model can learn string tasks and every
edit between two answers is an edit between token sequences. The chat template renders
conversations as ``<|user|>...<|end|><|assistant|>...</s>``: the assistant turn ends with the
EOS token, so generation stops where a turn ends.
"""

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHARACTERS = [c for c in string.printable if c not in "\t\r\x0b\x0c"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>{{ message['content'] }}<|end|>"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}<|end|>"
    "{% elif message['role'] == 'assistant' %}<|assistant|>{{ message['content'] }}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_char_tokenizer(with_chat_template: bool = True) -> PreTrainedTokenizerFast:
    """Build the character-level tokenizer (104 tokens: 8 special tokens and 96 characters)."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return wrap_with_toy_markup(backend, with_chat_template)


def wrap_with_toy_markup(backend: Tokenizer, with_chat_template: bool = True) -> PreTrainedTokenizerFast:
    """A `tokenizers` backend (whose vocabulary holds `SPECIAL_TOKENS`) as a transformers tokenizer with the toy
    world's special tokens and chat markup; `benchmarks/speed.py` wraps its BPE tokenizer the same way."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )
    if with_chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
