"""The speed benchmark's tokenizer and rows: a byte-level BPE trained offline on seeded pseudo-English (or the toy
world's character-level tokenizer), prompts of exactly ``prompt_length`` tokens and references of a completion's
length; or, with SmolLM2, its own tokenizer and the real task's prompts. And what one row costs in tokens."""

import itertools
import random
import statistics
import string

from benchmarks.real.smollm2 import smollm2_model_dir
from benchmarks.real.task import conversational, make_splits
from benchmarks.speed.settings import Settings, improver_template


BPE_VOCAB_SIZE = 4096
# Frequent English words; the rest of the pseudo-English text is syllable words (see `pseudo_english`).
FUNCTION_WORDS = (
    "the of and to in is that for it as with was on be by at this are from or have an they which one you were her "
    "all she there would their we him been has when who will more no if out so said what up its about into than them "
    "can only other new some could time these two may then do first any my now such like our over man me even most "
    "made after also did many before must through back years where much your way well down should because each just "
    "those people how too little state good very make world still own see men work long get here between both life"
).split()


def syllable_words(seed: int = 0, count: int = 6000) -> list[str]:
    """Made-up words of 1 to 4 consonant-vowel syllables, in a seeded random order (the Zipf rank)."""
    rng = random.Random(seed)
    consonants, vowels = "bcdfghklmnprstvwz", "aeiou"
    words = sorted(
        {
            "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.choice((1, 2, 2, 3, 3, 4))))
            for _ in range(count)
        }
    )
    rng.shuffle(words)
    return words


def pseudo_english(rng: random.Random, num_sentences: int) -> list[str]:
    """Seeded sentences: English function words (45%) and Zipf-distributed syllable words (no data files needed)."""
    words = syllable_words()
    cum_weights = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(words))))
    sentences = []
    for _ in range(num_sentences):
        length = rng.randint(6, 18)
        sentence = [
            rng.choice(FUNCTION_WORDS) if rng.random() < 0.45 else rng.choices(words, cum_weights=cum_weights)[0]
            for _ in range(length)
        ]
        sentences.append(" ".join(sentence) + rng.choice((".", ".", ",", "?", ":")))
    return sentences


def build_tokenizer(settings: Settings):
    """The benchmark's tokenizer: a byte-level BPE trained here, offline (default), or the toy character-level one."""
    from trl_sgpo.toy import build_char_tokenizer

    if settings.real_model:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(smollm2_model_dir())
    if settings.tokenizer == "char":
        return build_char_tokenizer()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from trl_sgpo.config import DEFAULT_IMPROVER_INSTRUCTION, DEFAULT_IMPROVER_TEMPLATE
    from trl_sgpo.toy.tokenizer import SPECIAL_TOKENS, wrap_with_toy_markup

    corpus = (
        pseudo_english(random.Random(1234), 20000) + [DEFAULT_IMPROVER_TEMPLATE, DEFAULT_IMPROVER_INSTRUCTION] * 50
    )
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    return wrap_with_toy_markup(backend)  # the toy's special tokens and chat markup: <|user|>...<|assistant|>...</s>


def token_count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def text_of_tokens(tokenizer, rng: random.Random, num_tokens: int) -> str:
    """Pseudo-English text of exactly ``num_tokens`` tokens: words while they fit, then one-token words."""
    if token_count(tokenizer, "a b") == 3:  # character level: any letters and spaces
        return "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(num_tokens))
    single = [
        word for word in FUNCTION_WORDS if token_count(tokenizer, "x " + word) == token_count(tokenizer, "x") + 1
    ]
    pool = " ".join(pseudo_english(rng, 6)).split()
    words: list[str] = []
    for _ in range(10 * num_tokens + 100):
        count = token_count(tokenizer, " ".join(words))
        if count == num_tokens:
            return " ".join(words)
        if count > num_tokens:  # the last word was too long: drop it, fill with one-token words from now on
            words.pop()
            pool = []
            continue
        words.append(pool.pop() if pool else rng.choice(single))
    raise RuntimeError(f"could not build a text of exactly {num_tokens} tokens")


def prompt_markup_tokens(tokenizer) -> int:
    """Tokens the chat template adds around a one-turn prompt (with the generation prompt)."""
    messages = [{"role": "user", "content": ""}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(rendered, add_special_tokens=False)["input_ids"])


def build_dataset(settings: Settings, tokenizer, num_rows: int):
    """Conversational prompt-completion rows whose rendered prompts are all exactly `prompt_length` tokens."""
    from datasets import Dataset

    if settings.real_model:  # the real task's prompts and references, in a seeded order: the same for every arm
        rows = conversational(make_splits()["train"])
        random.Random(settings.seed).shuffle(rows)
        return Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows[:num_rows]])
    content_length = settings.prompt_length - prompt_markup_tokens(tokenizer)
    if content_length < 1:
        raise ValueError(f"--prompt-length {settings.prompt_length} leaves no room for the chat markup")
    rng = random.Random(settings.seed)
    rows = [
        {
            "prompt": [{"role": "user", "content": text_of_tokens(tokenizer, rng, content_length)}],
            # The reference has the length of a generated completion (content + EOS = max_new_tokens).
            "completion": [
                {"role": "assistant", "content": text_of_tokens(tokenizer, rng, settings.max_new_tokens - 1)}
            ],
        }
        for _ in range(num_rows)
    ]
    return Dataset.from_list(rows)


def rendered_prompt_lengths(settings: Settings, tokenizer) -> list[int]:
    """The policy prompts' token counts: all ``prompt_length``, or the real task's rendered prompts."""
    if not settings.real_model:
        return [settings.prompt_length]
    dataset = build_dataset(settings, tokenizer, num_rows=settings.batch_size * 4)
    return [
        len(tokenizer.apply_chat_template(row["prompt"], tokenize=True, add_generation_prompt=True, return_dict=False))
        for row in dataset
    ]


def tokens_per_row(settings: Settings, tokenizer) -> dict[str, int]:
    """What one row costs in tokens: the policy's prompt (the median), a completion (its cap with sampled lengths),
    and what each improver format adds."""
    from trl_sgpo.config import DEFAULT_IMPROVER_INSTRUCTION
    from trl_sgpo.method.improver import next_turn_suffix, render_improver_prompt

    empty = [{"role": "user", "content": ""}]
    template_turn = render_improver_prompt(improver_template(settings), empty, "", tokenizer, reference="")
    suffix = next_turn_suffix(DEFAULT_IMPROVER_INSTRUCTION, empty, tokenizer)
    return {
        "prompt": int(statistics.median(rendered_prompt_lengths(settings, tokenizer))),
        "completion": settings.max_new_tokens,
        # template: a new conversation with the template around the prompt's content and the draft
        "template_overhead": token_count(tokenizer, template_turn),
        # next turn: the end of the draft's turn, the instruction turn and the assistant header (the draft's EOS is
        # already counted with the completion)
        "next_turn_overhead": token_count(tokenizer, suffix) - 1,
        "instruction": token_count(tokenizer, DEFAULT_IMPROVER_INSTRUCTION),
    }
