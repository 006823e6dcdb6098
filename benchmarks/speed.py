"""Speed and memory of one SGPO step against one step of TRL's `OnlineDPOTrainer`, on the same model and batch.

What is measured, and why
-------------------------
SGPO replaces OnlineDPO's "sample two completions, score them with a reward" by "sample one completion, let the same
model rewrite it". The question is what that costs per optimizer step. The arms run on the same randomly initialised
Llama (built from a config), the same prompts, the same batch size and the same number of generated tokens:

- ``online_dpo``: upstream `OnlineDPOTrainer` with a free reward function (the string length): OnlineDPO's lower
  bound, where scoring costs nothing;
- ``online_dpo_rm``: upstream `OnlineDPOTrainer` with a reward model of the policy's own size (a
  `LlamaForSequenceClassification` head on the same config): the common real setup;
- ``sgpo_dpo``: an `SGPOTrainer` DPO-phase step with ``improver_format="next_turn"`` (schedule ``improver_steps=0,
  dpo_steps=1``, the default ``improver_loss_weight`` of 0.3): one policy sample, the rewrite generated on the
  draft's KV cache, DPO loss plus the improver loss, the draft scored inside the improver's forward pass;
- ``sgpo_improver``: an `SGPOTrainer` improver-phase step, next turn (``improver_warmup_steps`` large): one policy
  sample and a supervised step of the improver role;
- ``sgpo_dpo_template``, ``sgpo_improver_template``: the same with ``improver_format="template"`` (what
  ``improver_format="auto"``, the default, picks for plain-text prompts or a chat template that does not continue the
  policy's prompt; ``--improver-template`` picks its template), for comparison.

The tokenizer is a byte-level BPE (4096 tokens) trained offline, at start, on seeded pseudo-English text (function
words and Zipf-distributed syllable words, plus the improver template and instruction), with the chat markup of
`trl_sgpo.toy`: the improver's instruction then costs what it costs a real chat model (a few dozen tokens, not one per
character). ``--tokenizer char`` runs with `trl_sgpo.toy`'s character-level tokenizer instead. Tokens per row (prompt,
completion, improver turn) are reported.

Every generated completion is exactly ``--max-new-tokens`` tokens long in every arm: EOS is suppressed before the
last position (``min_new_tokens``) and forced at it (``forced_eos_token_id``), so all arms generate the same number of
tokens and every completion ends (no pair is dropped as truncated). SGPO's improver uses the same ``max_new_tokens``.

One measurement is one optimizer step: ``trainer.training_step`` on a batch, then gradient clipping, ``optimizer.step``
and ``zero_grad`` (as `transformers.Trainer` does), timed with `time.perf_counter` (with `torch.cuda.synchronize` on
CUDA). SGPO's step is split by its own record (`trl_sgpo.records.StepRecord`, with ``synchronize_stage_clock`` on);
upstream's by wrapping methods on the trainer instance:

- generation: time in the sampler (SGPO, both roles: the step record's ``generation`` seconds) or ``_generate``
  (upstream; it also renders and tokenises the prompts);
- forward/backward: time in every scoring pass, policy and reference (SGPO: the record's ``forward`` seconds;
  upstream: ``_forward``), plus the backward pass;
- reward: time in upstream's ``_calculate_rewards_from_functions`` (the reward model's forward pass);
- optimizer: clipping, ``optimizer.step`` and ``zero_grad``;
- rest: ``training_step`` minus the above: tokenisation, template rendering, edit scripts, the pair filter,
  statistics.

The record and the wrappers also count the work done (generate calls, rows, prompt tokens fed to generate (cached
tokens not counted), tokens through those forward calls with and without gradients, and how many of them are
padding), which is the first place to look when a ratio is off. SGPO packs every continuation of a prompt into one
row with the prompt encoded once (``[x | y, instruction, target | y' | reference]``, and ``[x | y' | y]`` for the
reference model; `Scorer.packed_forward`) where the model allows it, as the Llama here does.

Arms are interleaved (``for repeat: for arm: one step``, the arm order rotating each repeat) after warm-up steps, so
that a slow moment of a shared machine hits every arm alike; medians, inter-quartile ranges and the ratios to both
OnlineDPO arms are reported (the ratio of medians, and the median and IQR of the per-repeat paired ratios).

Peak memory is measured per arm in a fresh subprocess, with full fine-tuning and with LoRA (r=8 on the attention
projections): on CPU the peak RSS (VmHWM on Linux, ``ru_maxrss`` elsewhere) minus the RSS after the model is built;
on CUDA ``torch.cuda.max_memory_allocated`` minus the memory allocated after the model is built. The difference (what
the trainer adds: reference copy, reward model, gradients, optimizer state, activations) is what the ratios compare;
absolute peaks are reported too.

The SmolLM2 configuration (``--model-size smollm2``) runs SmolLM2-135M-Instruct with its own weights, its tokenizer
(49152 tokens: the LM head and the log-softmax weigh as they do for users) and its chat template, on the real task's
prompts (benchmarks/real_task.py, the same seeded batches for every arm), with completions as the model samples them,
ending at its end of turn (``--lengths sampled``, its default): the arms then generate what they would in a real run
rather than the same number of tokens. ``--lora`` times LoRA training; ``--gradient-checkpointing`` turns
checkpointing on in every arm. Tokens per second (generated, and through forward passes with gradients) are reported
beside the times.

Goals checked (reported as met or MISSED, never adjusted; a timing goal is met when the upper quartile of its paired
per-repeat ratio is within the target, so that machine noise does not flip it): the SGPO DPO-phase step <= 1.0x
the OnlineDPO step with the reward model and <= 1.3x the free-reward step; the improver-phase step <= 0.7x the
free-reward step; LoRA peak memory of both SGPO phases <= 1.3x the free-reward run's.

Without ``--model-size``, the script runs its suite (benchmarks/speed_suite.py): the small configuration, the SmolLM2
one (LoRA) and the speculated rewrite (benchmarks/speculation.py), each in its own process, one after the other, and
writes ``speed.{md,json}`` with every part's report and one goal table. With ``--model-size``, one configuration.
Run on one CPU thread (tiny matmuls on several contended OpenMP threads are erratic)::

    python benchmarks/speed.py                      # the suite, 23 min: benchmarks/results/speed.{md,json}
    python benchmarks/speed.py --quick --output-dir /tmp/speed    # the suite at toy sizes, a few minutes (CI)
    python benchmarks/speed.py --model-size small   # one configuration: benchmarks/results/speed_small.{md,json}
    python benchmarks/speed.py --model-size smollm2 --lora --arms online_dpo online_dpo_rm sgpo_dpo sgpo_improver \
        --repeats 6 --warmup 1                      # SmolLM2, as in the suite: speed_smollm2.{md,json}
    python benchmarks/speed.py --model-size smollm2 --gradient-checkpointing ...   # speed_smollm2_full_gc.{md,json}
    python benchmarks/speed.py --device cuda --model-size large --batch-size 16 --max-new-tokens 128

Each configuration writes its own report (`results_name`): ``speed_<size>`` for the random models, ``speed_smollm2``
for SmolLM2 with LoRA, ``_full`` for SmolLM2 with full fine-tuning, ``_gc`` with gradient checkpointing; ``speed``
is the suite's. ``benchmarks/speed_sweep.py`` runs this script once per point of a completion length x batch grid.
"""

from __future__ import annotations

import os


os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import inspect  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import string  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402


REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # benchmark this checkout's trl_sgpo, installed or not
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # smollm2.py, real_task.py

ARMS = ("online_dpo", "online_dpo_rm", "sgpo_dpo", "sgpo_improver", "sgpo_dpo_template", "sgpo_improver_template")
BASELINE = "online_dpo"  # the free-reward run
REWARD_MODEL_BASELINE = "online_dpo_rm"
COMPONENTS = ("step", "training_step", "generation", "forward_backward", "reward", "optimizer", "rest")
SGPO_FORMATS = {  # arm -> (phase, improver_format)
    "sgpo_dpo": ("dpo", "next_turn"),
    "sgpo_improver": ("improver", "next_turn"),
    "sgpo_dpo_template": ("dpo", "template"),
    "sgpo_improver_template": ("improver", "template"),
}
BPE_VOCAB_SIZE = 4096
# Frequent English words; the rest of the pseudo-English text is syllable words (see `pseudo_english`).
FUNCTION_WORDS = (
    "the of and to in is that for it as with was on be by at this are from or have an they which one you were her "
    "all she there would their we him been has when who will more no if out so said what up its about into than them "
    "can only other new some could time these two may then do first any my now such like our over man me even most "
    "made after also did many before must through back years where much your way well down should because each just "
    "those people how too little state good very make world still own see men work long get here between both life"
).split()
MEMORY_MODES = ("full", "lora")
# hidden size, layers, attention heads (intermediate size = 2 x hidden, as in `trl_sgpo.toy.build_tiny_model`)
MODEL_SIZES = {
    "tiny": (64, 2, 2),
    "small": (256, 4, 4),
    "medium": (768, 12, 12),
    "large": (2048, 16, 16),
}
SMOLLM2 = "smollm2"  # SmolLM2-135M-Instruct: its weights, tokenizer and chat template (benchmarks/smollm2.py)
SHORT_TEMPLATE = "{prompt}\ndraft: {response}\nfix:"
DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parent / "results"
GOALS = (
    # (name, what, target): the goals of issue 10, as ratios from one run; a timing goal is met when the upper
    # quartile of its paired per-repeat ratio is within the target (so that machine noise cannot flip it)
    ("dpo_step_ratio_rm", "SGPO DPO-phase step / OnlineDPO step with a reward model", 1.0),
    ("dpo_step_ratio", "SGPO DPO-phase step / OnlineDPO step with the free reward", 1.3),
    ("improver_step_ratio", "SGPO improver-phase step / OnlineDPO step with the free reward", 0.7),
    ("lora_peak_ratio_dpo", "LoRA peak memory (above the model), SGPO DPO phase / OnlineDPO free reward", 1.3),
    (
        "lora_peak_ratio_improver",
        "LoRA peak memory (above the model), SGPO improver phase / OnlineDPO free reward",
        1.3,
    ),
)


# Flags that set one configuration: without --model-size, speed.py runs the suite (speed_suite.py), whose parts
# choose their own, so these are refused there (when set away from their defaults) rather than silently ignored.
SINGLE_CONFIGURATION_FLAGS = (
    "lora",
    "arms",
    "batch_size",
    "prompt_length",
    "max_new_tokens",
    "repeats",
    "warmup",
    "lengths",
    "gradient_checkpointing",
    "improver_template",
    "tokenizer",
    "memory_steps",
)

# ----------------------------------------------------------------------------------------------------- settings


@dataclass
class Settings:
    device: str = "cpu"
    model_size: str = "small"
    batch_size: int = 8
    prompt_length: int = 64
    max_new_tokens: int = 32
    repeats: int = 12
    warmup: int = 2
    memory_steps: int = 2
    threads: int = 1
    seed: int = 0
    improver_template: str = "default"
    tokenizer: str = "bpe"
    gradient_checkpointing: bool = False
    skip_memory: bool = False
    lengths: str = "fixed"  # "fixed": every completion max_new_tokens long; "sampled": as sampled, ending at EOS
    lora: bool = False  # the timed arms train a LoRA adapter (memory measures both modes anyway)
    arms: tuple[str, ...] = ARMS

    @property
    def real_model(self) -> bool:
        return self.model_size == SMOLLM2

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.device == "cuda" else torch.float32


def parse_args(argv: list[str] | None = None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--model-size",
        choices=[*MODEL_SIZES, SMOLLM2],
        default=None,
        help="a random Llama of this size (default: small; tiny with --quick), or 'smollm2': SmolLM2-135M-Instruct "
        "with its own weights, tokenizer and chat template, on the real task's prompts (benchmarks/real_task.py)",
    )
    parser.add_argument(
        "--lengths",
        choices=("fixed", "sampled"),
        default=None,
        help="'fixed': every completion exactly --max-new-tokens long (the random models' default); 'sampled': as "
        "the model samples them, ending at EOS, up to --max-new-tokens (the default with smollm2)",
    )
    parser.add_argument("--lora", action="store_true", help="time LoRA training (r=8) instead of full fine-tuning")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=None, help="default: all")
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per step (default 8, 4 with --quick)")
    parser.add_argument("--prompt-length", type=int, default=None, help="tokens of every rendered prompt (default 64)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="tokens of every completion (default 32)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per arm (default 12, 3 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per arm first (default 2)")
    parser.add_argument("--memory-steps", type=int, default=2, help="steps run in each memory subprocess")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: see the module docstring)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--improver-template",
        choices=("default", "short"),
        default="default",
        help="SGPO's improver prompt: the library default, or the short '{prompt}\\ndraft: {response}\\nfix:'",
    )
    parser.add_argument(
        "--tokenizer",
        choices=("bpe", "char"),
        default="bpe",
        help="a byte-level BPE trained offline on pseudo-English (default), or the toy world's character-level one",
    )
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on in every arm (off by default)")
    parser.add_argument("--skip-memory", action="store_true", help="timing only")
    parser.add_argument("--quick", action="store_true", help="tiny model, few repeats: < 2 min on one CPU thread")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    # Internal: one memory measurement in this (fresh) process, printed as JSON.
    parser.add_argument("--memory-probe", nargs=2, metavar=("ARM", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.model_size is None and not args.memory_probe:  # the suite (speed_suite.py): its parts set their own
        chosen = [flag for flag in SINGLE_CONFIGURATION_FLAGS if getattr(args, flag) != parser.get_default(flag)]
        if chosen:
            flags = ", ".join("--" + flag.replace("_", "-") for flag in chosen)
            parser.error(
                f"{flags} set one configuration's settings: pass --model-size with them (e.g. --model-size small), "
                "or drop them to run both configurations and the speculation benchmark at their own settings"
            )

    quick = args.quick
    settings = Settings(
        device=args.device,
        model_size=args.model_size or ("tiny" if quick else "small"),
        batch_size=args.batch_size or (4 if quick else 8),
        prompt_length=args.prompt_length or (32 if quick else 64),
        max_new_tokens=args.max_new_tokens or (16 if quick else 32),
        repeats=args.repeats or (3 if quick else 12),
        warmup=args.warmup if args.warmup is not None else (1 if quick else 2),
        memory_steps=1 if quick else args.memory_steps,
        threads=args.threads,
        seed=args.seed,
        improver_template=args.improver_template,
        tokenizer=args.tokenizer,
        gradient_checkpointing=args.gradient_checkpointing,
        skip_memory=args.skip_memory,
        lengths=args.lengths or ("sampled" if args.model_size == SMOLLM2 else "fixed"),
        lora=args.lora,
        arms=tuple(arm for arm in ARMS if arm in (args.arms or ARMS)),
    )
    missing = {BASELINE, REWARD_MODEL_BASELINE} - set(settings.arms)
    if missing:
        parser.error(f"--arms must include the baselines {sorted(missing)}")
    if settings.lengths == "sampled" and not settings.real_model:
        parser.error("--lengths sampled needs a trained model (--model-size smollm2): a random one rarely samples EOS")
    if settings.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is visible")
    if settings.max_new_tokens < 2:
        parser.error("--max-new-tokens must be >= 2 (one content token, then the forced EOS)")
    return settings, args


# --------------------------------------------------------------------------------------- data, model, trainers


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


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
        from smollm2 import smollm2_model_dir
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


def improver_template(settings: Settings) -> str:
    from trl_sgpo.config import DEFAULT_IMPROVER_TEMPLATE

    return DEFAULT_IMPROVER_TEMPLATE if settings.improver_template == "default" else SHORT_TEMPLATE


def prompt_markup_tokens(tokenizer) -> int:
    """Tokens the chat template adds around a one-turn prompt (with the generation prompt)."""
    messages = [{"role": "user", "content": ""}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(rendered, add_special_tokens=False)["input_ids"])


def build_dataset(settings: Settings, tokenizer, num_rows: int):
    """Conversational prompt-completion rows whose rendered prompts are all exactly `prompt_length` tokens."""
    from datasets import Dataset

    if settings.real_model:  # the real task's prompts and references, in a seeded order: the same for every arm
        from real_task import conversational, make_splits

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


def max_length(settings: Settings, tokenizer) -> int:
    """A `max_length` that truncates nothing in any arm: the prompt, plus what SGPO's length budget reserves beyond
    it (`PromptBudget`: the improver template with its chat markup, a draft and a rewrite), plus a margin."""
    from trl_sgpo.data.prompt_lengths import PromptBudget

    template_tokens = token_count(tokenizer, improver_template(settings)) + 16  # 16: the chat markup around it
    reserved = -PromptBudget(0, template_tokens, settings.max_new_tokens, settings.max_new_tokens).available
    longest = max(rendered_prompt_lengths(settings, tokenizer))
    return 64 * math.ceil((longest + reserved + 8) / 64)


def build_model(settings: Settings, tokenizer, meta: bool = False):
    """The benchmark's model on its device and dtype (``meta``: shapes only, to count parameters)."""
    from trl_sgpo.toy import build_tiny_model

    if settings.real_model:
        from smollm2 import smollm2_model_dir
        from transformers import AutoConfig, AutoModelForCausalLM

        folder = smollm2_model_dir()
        if meta:
            with torch.device("meta"):
                return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
        return AutoModelForCausalLM.from_pretrained(folder, dtype=settings.dtype).to(settings.device)
    hidden, layers, heads = MODEL_SIZES[settings.model_size]
    with torch.device("meta") if meta else contextlib.nullcontext():
        model = build_tiny_model(
            tokenizer,
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads,
            max_positions=max_length(settings, tokenizer),
            seed=settings.seed,
        )
    return model if meta else model.to(device=settings.device, dtype=settings.dtype)


def reward_model(settings: Settings, tokenizer, policy):
    """A reward model of the policy's own size: a sequence-classification head (one score) on the same config."""
    from transformers import LlamaForSequenceClassification

    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(settings.seed + 1)
    model = LlamaForSequenceClassification(config)
    return model.to(device=settings.device, dtype=settings.dtype).eval()


def cheap_reward(completions: list, **kwargs: Any) -> list[float]:
    """OnlineDPO's reward: shorter is better. Costs microseconds, so scoring does not weigh on the comparison."""
    return [-float(len(str(completion))) for completion in completions]


def common_config(settings: Settings, tokenizer, output_dir: str) -> dict[str, Any]:
    """The settings every arm shares."""
    eos = tokenizer.eos_token_id
    n = settings.max_new_tokens
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=settings.batch_size,
        max_new_tokens=n,
        max_length=max_length(settings, tokenizer),
        # "fixed": exactly n tokens per completion in every arm (no EOS before the last position, EOS forced at it);
        # "sampled": as the model samples them, ending at its EOS (the chat template's end of turn), at most n.
        generation_kwargs=(
            {"min_new_tokens": n - 1, "max_new_tokens": n, "forced_eos_token_id": eos}
            if settings.lengths == "fixed"
            else {}
        ),
        learning_rate=1e-5,
        max_grad_norm=1.0,
        report_to="none",
        save_strategy="no",
        logging_steps=10**9,
        seed=settings.seed,
        dataloader_num_workers=0,
        use_cpu=settings.device == "cpu",
        bf16=settings.device == "cuda",
        gradient_checkpointing=settings.gradient_checkpointing,
    )


def lora_config():
    from peft import LoraConfig

    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    return LoraConfig(r=8, lora_alpha=16, target_modules=targets, task_type="CAUSAL_LM")


def import_trainers() -> None:
    """Import everything the trainers need (TRL, SGPO, PEFT)."""
    import peft  # noqa: F401
    from trl.experimental.online_dpo import OnlineDPOTrainer  # noqa: F401

    import trl_sgpo  # noqa: F401


def build_trainer(arm: str, settings: Settings, tokenizer, model, dataset, output_dir: str, peft: bool):
    """One trainer of ``arm`` on ``model``, prepared like `Trainer.train` does, ready for `training_step` calls."""
    peft_config = lora_config() if peft else None
    common = common_config(settings, tokenizer, output_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if arm in ("online_dpo", REWARD_MODEL_BASELINE):
            from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

            with_model = arm == REWARD_MODEL_BASELINE
            trainer = OnlineDPOTrainer(
                model=model,
                reward_funcs=reward_model(settings, tokenizer, model) if with_model else cheap_reward,
                reward_processing_classes=tokenizer if with_model else None,
                args=OnlineDPOConfig(**common),
                train_dataset=dataset,
                processing_class=tokenizer,
                peft_config=peft_config,
            )
        else:
            from trl_sgpo import SGPOConfig, SGPOTrainer

            expected, improver_format = SGPO_FORMATS[arm]
            schedule = (
                {"improver_warmup_steps": 0, "improver_steps": 0, "dpo_steps": 1}  # whatever the default warm-up
                if expected == "dpo"
                else {"improver_warmup_steps": 10**9, "improver_steps": 1, "dpo_steps": 1}
            )
            config = SGPOConfig(
                **common, **schedule, improver_format=improver_format, improver_template=improver_template(settings)
            )
            trainer = SGPOTrainer(
                model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
            )
            if trainer.phase_callback.phase != expected:
                raise RuntimeError(f"{arm}: the schedule gives a {trainer.phase_callback.phase} step")
    # What `Trainer._prepare_for_training` does on one device: optimizer, then accelerate's wrapping (autocast).
    trainer.create_optimizer()
    trainer.model_wrapped, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def batches(dataset, batch_size: int) -> list[dict[str, list]]:
    """Collated batches as the trainers' collator hands them over: columns of lists."""
    rows = dataset.to_list()
    return [
        {key: [row[key] for row in rows[i : i + batch_size]] for key in rows[0]}
        for i in range(0, len(rows) - batch_size + 1, batch_size)
    ]


# ------------------------------------------------------------------------------------------------- one step


@dataclass
class StepProbe:
    """Accumulates, during one step, the time in generation and forward/backward, and the work done."""

    device: str
    times: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    work: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def reset(self) -> None:
        self.times = defaultdict(float)
        self.work = defaultdict(float)

    def timed(self, bucket: str, function: Callable, count: Callable | None = None) -> Callable:
        """``function`` timed into ``bucket``; ``count(work, arguments, result)`` gets its arguments by name."""
        signature = inspect.signature(function)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            synchronize(self.device)
            start = time.perf_counter()
            result = function(*args, **kwargs)
            synchronize(self.device)
            self.times[bucket] += time.perf_counter() - start
            if count is not None:
                count(self.work, signature.bind(*args, **kwargs).arguments, result)
            return result

        return wrapper

    def on_step_record(self, record) -> None:
        """SGPO: the step's own record (`trl_sgpo.records.StepRecord`) holds the time split and the work."""
        self.times["generation"] += record.seconds.get("generation", 0.0)
        self.times["forward_backward"] += record.seconds.get("forward", 0.0) + record.seconds.get("backward", 0.0)
        for name, value in record.work.items():
            self.work[name] += value


def _count_generate(work: dict[str, float], arguments: dict, result: tuple) -> None:
    """Upstream `_generate(model, prompts)` -> (prompt ids, prompt mask, completion ids, completion mask, vision)."""
    prompt_ids, _, _, completion_mask, _ = result
    work["generate_calls"] += 1
    work["generated_rows"] += prompt_ids.size(0)
    work["generation_prompt_tokens"] += prompt_ids.numel()
    work["generated_tokens"] += int(completion_mask.sum())


def _count_forward(work: dict[str, float], arguments: dict, result: torch.Tensor) -> None:
    """Upstream `_forward(model, prompt_ids, prompt_mask, completion_ids, completion_mask, ...)`: tokens in, and the
    padding among them."""
    prompt_ids, prompt_mask = arguments["prompt_ids"], arguments["prompt_mask"]
    completion_ids, completion_mask = arguments["completion_ids"], arguments["completion_mask"]
    tokens = prompt_ids.numel() + completion_ids.numel()
    real = int(prompt_mask.sum()) + int(completion_mask.sum())
    kind = "grad" if result.requires_grad else "no_grad"
    work[f"forward_calls_{kind}"] += 1
    work[f"forward_tokens_{kind}"] += tokens
    work[f"forward_padding_tokens_{kind}"] += tokens - real


def instrument(trainer, probe: StepProbe) -> None:
    """SGPO: read each step's record (its stages timed with the device synchronized). Upstream: wrap the generation,
    forward, backward and reward methods of this trainer instance with the probe's timers."""
    if hasattr(trainer, "step_listeners"):
        trainer.synchronize_stage_clock = True
        trainer.step_listeners.append(probe.on_step_record)
        return
    trainer._generate = probe.timed("generation", trainer._generate, _count_generate)
    trainer._forward = probe.timed("forward_backward", trainer._forward, _count_forward)
    trainer.accelerator.backward = probe.timed("forward_backward", trainer.accelerator.backward)
    trainer._calculate_rewards_from_functions = probe.timed("reward", trainer._calculate_rewards_from_functions)


def run_step(trainer, batch: dict[str, list], probe: StepProbe) -> dict[str, float]:
    """One optimizer step, as `Trainer` runs it; returns its time split (seconds) and the work counted."""
    model = trainer.model_wrapped
    device = probe.device
    gc.collect()
    probe.reset()
    synchronize(device)
    start = time.perf_counter()
    trainer.training_step(model, batch)
    synchronize(device)
    after_step = time.perf_counter()
    if trainer.args.max_grad_norm > 0:
        trainer.accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
    trainer.optimizer.step()
    model.zero_grad()
    synchronize(device)
    end = time.perf_counter()
    training_step = after_step - start
    generation = probe.times["generation"]
    forward_backward = probe.times["forward_backward"]
    reward = probe.times["reward"]
    return {
        "step": end - start,
        "training_step": training_step,
        "generation": generation,
        "forward_backward": forward_backward,
        "reward": reward,
        "optimizer": end - after_step,
        "rest": training_step - generation - forward_backward - reward,
        **{f"work/{key}": value for key, value in probe.work.items()},
    }


# --------------------------------------------------------------------------------------------------- timing


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile, q in [0, 1]."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(values: list[float]) -> dict[str, float]:
    return {
        "median": percentile(values, 0.5),
        "q1": percentile(values, 0.25),
        "q3": percentile(values, 0.75),
        "iqr": percentile(values, 0.75) - percentile(values, 0.25),
        "min": min(values),
        "max": max(values),
    }


def measure_timing(settings: Settings, tokenizer, dataset, workdir: str) -> dict[str, Any]:
    """Build the three arms on identical copies of one model, then time interleaved steps."""
    trainers, probes = {}, {}
    arms = settings.arms
    for arm in arms:
        model = build_model(settings, tokenizer)
        workspace = os.path.join(workdir, arm)
        trainers[arm] = build_trainer(arm, settings, tokenizer, model, dataset, workspace, peft=settings.lora)
        probes[arm] = StepProbe(settings.device)
        instrument(trainers[arm], probes[arm])
    all_batches = batches(dataset, settings.batch_size)
    samples: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
    total = settings.warmup + settings.repeats
    for repeat in range(total):
        order = arms[repeat % len(arms) :] + arms[: repeat % len(arms)]  # rotate: no arm always runs first
        batch = all_batches[repeat % len(all_batches)]
        for arm in order:
            torch.manual_seed(settings.seed + repeat)
            result = run_step(trainers[arm], batch, probes[arm])
            if repeat >= settings.warmup:
                samples[arm].append(result)
        timed = "warm-up" if repeat < settings.warmup else f"repeat {repeat - settings.warmup + 1}/{settings.repeats}"
        line = "  ".join(f"{arm} {samples[arm][-1]['step']:.3f}s" for arm in arms if repeat >= settings.warmup)
        print(f"[timing] {timed} {line}", file=sys.stderr, flush=True)
    del trainers
    gc.collect()
    return summarize_timing(samples)


def summarize_timing(samples: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    baseline_steps = [s["step"] for s in samples[BASELINE]]
    baseline_median = percentile(baseline_steps, 0.5)
    rm_steps = [s["step"] for s in samples[REWARD_MODEL_BASELINE]]
    timing = {}
    for arm, arm_samples in samples.items():
        summary = {name: summarize([s[name] for s in arm_samples]) for name in COMPONENTS}
        work_keys = sorted({key for s in arm_samples for key in s if key.startswith("work/")})
        work = {key[len("work/") :]: percentile([s.get(key, 0.0) for s in arm_samples], 0.5) for key in work_keys}
        step_median = summary["step"]["median"]
        paired = [s["step"] / b for s, b in zip(arm_samples, baseline_steps)]
        paired_rm = [s["step"] / b for s, b in zip(arm_samples, rm_steps)]
        timing[arm] = {
            "samples": [{name: s[name] for name in COMPONENTS} for s in arm_samples],
            "summary": summary,
            "fractions": {name: summary[name]["median"] / step_median for name in COMPONENTS[2:]},
            "ratio_vs_online_dpo": step_median / baseline_median,
            "paired_ratio_vs_online_dpo": summarize(paired),
            "ratio_vs_online_dpo_rm": step_median / percentile(rm_steps, 0.5),
            "paired_ratio_vs_online_dpo_rm": summarize(paired_rm),
            "work": work,
        }
    return timing


# --------------------------------------------------------------------------------------------------- memory


def current_rss_bytes() -> int:
    """Resident set size now (Linux: /proc; elsewhere the peak so far, the best that is available)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process.

    On Linux this is VmHWM, the high-water mark of this process image: `ru_maxrss` is not used there because
    after fork + exec it starts from the parent's RSS at the fork (the benchmark's parent holds three trainers).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def memory_probe(settings: Settings, arm: str, mode: str) -> dict[str, float]:
    """Peak memory of ``arm`` with ``mode`` ('full' or 'lora') fine-tuning, in this process (which must be fresh)."""
    import_trainers()  # imported before the baseline: module code is not what is measured
    tokenizer = build_tokenizer(settings)
    dataset = build_dataset(settings, tokenizer, num_rows=settings.batch_size * 2)
    model = build_model(settings, tokenizer)
    gc.collect()
    if settings.device == "cuda":
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        baseline = current_rss_bytes()
    with tempfile.TemporaryDirectory() as workdir:
        trainer = build_trainer(arm, settings, tokenizer, model, dataset, workdir, peft=mode == "lora")
        all_batches = batches(dataset, settings.batch_size)
        probe = StepProbe(settings.device)
        for step in range(1 + settings.memory_steps):  # the first step allocates the optimizer state
            run_step(trainer, all_batches[step % len(all_batches)], probe)
        if settings.device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = peak_rss_bytes()
    return {"baseline_bytes": baseline, "peak_bytes": peak, "delta_bytes": peak - baseline}


def measure_memory(settings: Settings, argv: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """One fresh subprocess per (mode, arm): a peak is a high-water mark of a whole process. Two run at a time
    where there are two cores (a process's peak is its own, whatever runs beside it): half the wall time in CI."""
    from concurrent.futures import ThreadPoolExecutor

    def probe(mode: str, arm: str) -> dict[str, float]:
        command = [sys.executable, os.path.abspath(__file__), *argv, "--memory-probe", arm, mode]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            sys.stderr.write(completed.stderr)
            raise RuntimeError(f"memory probe {arm}/{mode} failed with exit code {completed.returncode}")
        entry = json.loads(completed.stdout.strip().splitlines()[-1])
        print(f"[memory] {mode} {arm}: +{entry['delta_bytes'] / 2**20:.1f} MiB", file=sys.stderr)
        return entry

    runs = [(mode, arm) for mode in MEMORY_MODES for arm in settings.arms]
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        entries = list(pool.map(lambda run: probe(*run), runs))
    memory: dict[str, dict[str, dict[str, float]]] = {mode: {} for mode in MEMORY_MODES}
    for (mode, arm), entry in zip(runs, entries):
        memory[mode][arm] = entry
    for mode in MEMORY_MODES:
        base = memory[mode][BASELINE]
        for arm in settings.arms:
            entry = memory[mode][arm]
            entry["ratio_vs_online_dpo"] = entry["delta_bytes"] / base["delta_bytes"]
            entry["peak_ratio_vs_online_dpo"] = entry["peak_bytes"] / base["peak_bytes"]
    return memory


# -------------------------------------------------------------------------------------------------- reporting


def check_goals(timing: dict[str, Any], memory: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each goal's value, and whether it is met: a timing goal by the upper quartile of its paired per-repeat
    ratios (``upper``), a memory goal (one measurement per arm) by its value."""
    values: dict[str, tuple[float, float, float]] = {}  # name -> (value, lower quartile, upper quartile)
    for name, arm, baseline in (
        ("dpo_step_ratio_rm", "sgpo_dpo", "online_dpo_rm"),
        ("dpo_step_ratio", "sgpo_dpo", "online_dpo"),
        ("improver_step_ratio", "sgpo_improver", "online_dpo"),
    ):
        if arm in timing:
            paired = timing[arm][f"paired_ratio_vs_{baseline}"]
            values[name] = (paired["median"], paired["q1"], paired["q3"])
    if memory is not None:
        for name, arm in (("lora_peak_ratio_dpo", "sgpo_dpo"), ("lora_peak_ratio_improver", "sgpo_improver")):
            if arm in memory["lora"]:
                ratio = memory["lora"][arm]["ratio_vs_online_dpo"]
                values[name] = (ratio, ratio, ratio)
    return [
        {
            "name": name,
            "what": what,
            "target": target,
            "value": values[name][0],
            "lower": values[name][1],
            "upper": values[name][2],
            "met": values[name][2] <= target,
        }
        for name, what, target in GOALS
        if name in values
    ]


def environment(settings: Settings, tokenizer) -> dict[str, Any]:
    import accelerate
    import peft
    import transformers
    import trl

    if settings.device == "cuda":
        device_name = torch.cuda.get_device_name()
    else:
        device_name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as cpuinfo:
                device_name = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    model = build_model(settings, tokenizer, meta=True)
    hidden, layers, heads = model.config.hidden_size, model.config.num_hidden_layers, model.config.num_attention_heads
    template_tokens = len(tokenizer(improver_template(settings), add_special_tokens=False)["input_ids"])
    return {
        "command": _command(),
        "tokenizer": {"kind": "smollm2" if settings.real_model else settings.tokenizer, "vocab_size": len(tokenizer)},
        "tokens_per_row": tokens_per_row(settings, tokenizer),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": settings.device,
        "device_name": device_name,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "model": {
            "size": settings.model_size,
            "hidden_size": hidden,
            "num_layers": layers,
            "num_heads": heads,
            "parameters": sum(p.numel() for p in model.parameters()),
            "dtype": str(settings.dtype).removeprefix("torch."),
        },
        "improver_template_tokens": template_tokens,
        "max_length": max_length(settings, tokenizer),
        "settings": asdict(settings),
    }


def fmt_seconds(summary: dict[str, float]) -> str:
    return f"{summary['median'] * 1000:.1f} ± {summary['iqr'] * 500:.1f}"


def per_second(arm_timing: dict[str, Any], work: str, component: str) -> str:
    """Median tokens of ``work`` per second of the median ``component`` time (generation, or the whole step)."""
    seconds = arm_timing["summary"][component]["median"]
    return f"{arm_timing['work'].get(work, 0.0) / seconds:.0f}" if seconds > 0 else "n/a"


def markdown_report(results: dict[str, Any]) -> str:
    env, timing, memory, goals = results["environment"], results["timing"], results["memory"], results["goals"]
    s = env["settings"]
    model = env["model"]
    rows = env["tokens_per_row"]
    arms = list(timing)
    kind = env["tokenizer"]["kind"]
    tokenizer = {
        "bpe": f"byte-level BPE trained offline on seeded pseudo-English ({env['tokenizer']['vocab_size']} tokens)",
        "char": f"character-level tokenizer ({env['tokenizer']['vocab_size']} tokens)",
        "smollm2": f"its own tokenizer ({env['tokenizer']['vocab_size']} tokens) and chat template",
    }[kind]
    if kind == "smollm2":
        model_line = (
            f"- model: SmolLM2-135M-Instruct, its own weights ({model['parameters'] / 1e6:.1f}M parameters, "
            f"{model['dtype']}); {tokenizer}; the real task's prompts (benchmarks/real_task.py)"
        )
    else:
        model_line = (
            f"- model: random Llama '{model['size']}' (hidden {model['hidden_size']}, {model['num_layers']} layers, "
            f"{model['num_heads']} heads, {model['parameters'] / 1e6:.2f}M parameters, {model['dtype']}); {tokenizer}"
        )
    lengths = (
        f"every completion exactly {s['max_new_tokens']} tokens"
        if s.get("lengths", "fixed") == "fixed"
        else f"completions as sampled, ending at EOS, at most {s['max_new_tokens']} tokens (same prompts and seeds)"
    )
    lines = [
        "# Speed: SGPO steps vs TRL's OnlineDPOTrainer step",
        "",
        f"- command: `{env['command']}`",
        f"- date: {env['date']}",
        f"- device: {env['device']} ({env['device_name']}), torch threads: {env['torch_threads']}",
        f"- versions: python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"trl {env['trl']}, peft {env['peft']}, accelerate {env['accelerate']}",
        model_line,
        f"- batch: {s['batch_size']} prompts; {lengths} (OnlineDPO: 2 per "
        "prompt; SGPO: 1 draft + 1 rewrite in the DPO phase); "
        f"max_length {env['max_length']}; gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}; "
        f"timed with {'LoRA (r=8)' if s.get('lora') else 'full fine-tuning'}",
        f"- arms: `online_dpo` scores with a free reward (string length); `online_dpo_rm` with a reward model of the "
        f"policy's size (LlamaForSequenceClassification, same config); `sgpo_*` use improver_format='next_turn' "
        f"(default instruction), `sgpo_*_template` improver_format='template' (template '{s['improver_template']}')",
        f"- repeats: {s['repeats']} interleaved steps per arm after {s['warmup']} warm-up steps; one step = "
        "`training_step` + clipping + `optimizer.step` + `zero_grad`",
        "",
        "## Tokens per row",
        "",
        "| prompt | completion | next turn adds (instruction turn and markup) | of which the instruction | "
        "template format adds (template and markup) |",
        "|---|---|---|---|---|",
        f"| {rows['prompt']} | {rows['completion']} | {rows['next_turn_overhead']} | {rows['instruction']} | "
        f"{rows['template_overhead']} |",
        "",
        "## Time per optimizer step (ms, median ± half IQR)",
        "",
        "| arm | step | vs online_dpo (paired IQR) | vs online_dpo_rm (paired IQR) | generation | forward/backward "
        "| reward | optimizer | rest | rest % | generated tokens/s | trained tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        t = timing[arm]
        summary, paired, paired_rm = t["summary"], t["paired_ratio_vs_online_dpo"], t["paired_ratio_vs_online_dpo_rm"]
        lines.append(
            f"| {arm} | {fmt_seconds(summary['step'])} | {t['ratio_vs_online_dpo']:.2f}x "
            f"({paired['q1']:.2f}–{paired['q3']:.2f}) | {t['ratio_vs_online_dpo_rm']:.2f}x "
            f"({paired_rm['q1']:.2f}–{paired_rm['q3']:.2f}) | {fmt_seconds(summary['generation'])} | "
            f"{fmt_seconds(summary['forward_backward'])} | {fmt_seconds(summary['reward'])} | "
            f"{fmt_seconds(summary['optimizer'])} | {fmt_seconds(summary['rest'])} | "
            f"{100 * t['fractions']['rest']:.1f}% | {per_second(t, 'generated_tokens', 'generation')} | "
            f"{per_second(t, 'forward_tokens_grad', 'step')} |"
        )
    lines += [
        "",
        "## Work per step (median)",
        "",
        "| arm | generate calls | rows generated | prompt tokens fed to generate | prompt tokens read from the "
        "draft's cache | tokens generated | forward tokens with grad (padding) | forward tokens without grad "
        "(padding) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        w = defaultdict(float, timing[arm]["work"])
        lines.append(
            f"| {arm} | {w['generate_calls']:.0f} | {w['generated_rows']:.0f} | {w['generation_prompt_tokens']:.0f} | "
            f"{w['generation_cached_tokens']:.0f} | {w['generated_tokens']:.0f} | {w['forward_tokens_grad']:.0f} "
            f"({w['forward_padding_tokens_grad']:.0f}) | {w['forward_tokens_no_grad']:.0f} "
            f"({w['forward_padding_tokens_no_grad']:.0f}) |"
        )
    lines.append("")
    lines.append(
        "The reward model's forward pass (`online_dpo_rm`) runs inside upstream's reward function and is counted in "
        "the reward column, not in the forward-token columns."
    )
    if memory is not None:
        unit = "allocated CUDA memory" if env["device"] == "cuda" else "RSS"
        lines += [
            "",
            f"## Peak memory ({unit}, MiB above the model alone; absolute peak in brackets; ratios vs online_dpo)",
            "",
            "| arm | full fine-tuning | ratio | LoRA r=8 | ratio |",
            "|---|---|---|---|---|",
        ]
        for arm in arms:
            full, lora = memory["full"][arm], memory["lora"][arm]
            lines.append(
                f"| {arm} | {full['delta_bytes'] / 2**20:.1f} [{full['peak_bytes'] / 2**20:.0f}] | "
                f"{full['ratio_vs_online_dpo']:.2f}x | {lora['delta_bytes'] / 2**20:.1f} "
                f"[{lora['peak_bytes'] / 2**20:.0f}] | {lora['ratio_vs_online_dpo']:.2f}x |"
            )
    lines += [
        "",
        "## Goals",
        "",
        "A timing goal is met when the upper quartile of its paired per-repeat ratio is within the target.",
        "",
        "| goal | target | value (paired IQR) | |",
        "|---|---|---|---|",
    ]
    for goal in goals:
        spread = f" ({goal['lower']:.2f}–{goal['upper']:.2f})" if goal["upper"] != goal["value"] else ""
        lines.append(
            f"| {goal['what']} | <= {goal['target']:.2f}x | {goal['value']:.2f}x{spread} | "
            f"{'met' if goal['met'] else 'MISSED'} |"
        )
    return "\n".join(lines) + "\n"


def results_name(settings: Settings) -> str:
    """One configuration's file name: ``speed_<size>`` for a random model (``speed_small``), ``speed_smollm2`` for
    SmolLM2 with LoRA (its headline), with ``_full`` for SmolLM2 with full fine-tuning and ``_gc`` with gradient
    checkpointing, so that each configuration keeps its own report (``speed`` is the suite's, speed_suite.py)."""
    name = f"speed_{settings.model_size}"
    if settings.real_model and not settings.lora:
        name += "_full"
    return name + ("_gc" if settings.gradient_checkpointing else "")


def _command() -> str:
    """The command line as run, with the `taskset -c` it ran under when the process was pinned to fewer cores."""
    words = ["python", *sys.argv]
    if hasattr(os, "sched_getaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < (os.cpu_count() or len(cores)):
            words = ["taskset", "-c", ",".join(map(str, cores)), *words]
    return shlex.join(words)


def forwarded_argv(args: argparse.Namespace) -> list[str]:
    """The settings a memory subprocess needs, as command-line flags."""
    argv = ["--device", args.device]
    for flag in ("model_size", "batch_size", "prompt_length", "max_new_tokens", "warmup"):
        value = getattr(args, flag)
        if value is not None:
            argv += [f"--{flag.replace('_', '-')}", str(value)]
    argv += ["--memory-steps", str(args.memory_steps), "--seed", str(args.seed), "--threads", str(args.threads)]
    argv += ["--improver-template", args.improver_template, "--tokenizer", args.tokenizer]
    if args.gradient_checkpointing:
        argv.append("--gradient-checkpointing")
    if args.lengths:
        argv += ["--lengths", args.lengths]
    if args.arms:
        argv += ["--arms", *args.arms]
    if args.quick:
        argv.append("--quick")
    return argv


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    settings, args = parse_args(argv)
    torch.set_num_threads(settings.threads)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.memory_probe:
        arm, mode = args.memory_probe
        print(json.dumps(memory_probe(settings, arm, mode)))
        return None

    if args.model_size is None:
        import speed_suite

        return speed_suite.run(
            args.output_dir, args.quick, args.device, args.threads, args.seed, args.skip_memory, _command()
        )

    tokenizer = build_tokenizer(settings)
    dataset = build_dataset(settings, tokenizer, num_rows=settings.batch_size * 4)
    with tempfile.TemporaryDirectory() as workdir:
        timing = measure_timing(settings, tokenizer, dataset, workdir)
    memory = None if settings.skip_memory else measure_memory(settings, forwarded_argv(args))
    results = {
        "environment": environment(settings, tokenizer),
        "timing": timing,
        "memory": memory,
        "goals": check_goals(timing, memory),
    }
    report = markdown_report(results)
    print(report)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    name = results_name(settings)
    (args.output_dir / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.output_dir / f"{name}.md").write_text(report)
    return results


if __name__ == "__main__":
    main()
