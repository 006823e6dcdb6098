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
- ``sgpo_improver``: an `SGPOTrainer` improver-phase step, next turn (``improver_warmup_steps`` large, with
  ``improver_warmup_drafts="fresh"``): one policy sample and a supervised step of the improver role. This is the
  improver step that generates (Step 1 with fresh drafts, or a refresh step with ``improver_steps`` > 0); Step 1 with
  the default ``improver_warmup_drafts="initial"`` samples its pool once before its first update and generates
  nothing per step, so its steps cost this arm's minus its generation;
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
prompts (benchmarks/real/task.py, the same seeded batches for every arm), with completions as the model samples them,
ending at its end of turn (``--lengths sampled``, its default): the arms then generate what they would in a real run
rather than the same number of tokens. ``--lora`` times LoRA training; ``--gradient-checkpointing`` turns
checkpointing on in every arm. Tokens per second (generated, and through forward passes with gradients) are reported
beside the times.

Goals checked (reported as met or MISSED, never adjusted; a timing goal is met when the upper quartile of its paired
per-repeat ratio is within the target, so that machine noise does not flip it): the SGPO DPO-phase step <= 1.0x
the OnlineDPO step with the reward model and <= 1.3x the free-reward step; the improver-phase step <= 0.7x the
free-reward step; LoRA peak memory of both SGPO phases <= 1.3x the free-reward run's.

Without ``--model-size``, the script runs its suite (benchmarks/speed/suite.py): the small configuration, the SmolLM2
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

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from benchmarks.protocol.command import RESULTS_DIR
from benchmarks.speed.configuration import run_configuration
from benchmarks.speed.memory import memory_probe
from benchmarks.speed.report import command_line
from benchmarks.speed.settings import ARMS, BASELINE, MODEL_SIZES, REWARD_MODEL_BASELINE, SMOLLM2, Settings
from benchmarks.speed.suite import run as run_suite


# Flags that set one configuration: without --model-size, speed.py runs the suite (benchmarks/speed/suite.py), whose
# parts choose their own, so these are refused there (when set away from their defaults) rather than silently ignored.
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
        "with its own weights, tokenizer and chat template, on the real task's prompts (benchmarks/real/task.py)",
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
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    # Internal: one memory measurement in this (fresh) process, printed as JSON.
    parser.add_argument("--memory-probe", nargs=2, metavar=("ARM", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.model_size is None and not args.memory_probe:  # the suite (speed/suite.py): its parts set their own
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


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """The suite without ``--model-size``; one configuration with it; one memory measurement with the internal
    ``--memory-probe`` (printed as JSON, for the process that started this one)."""
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
        return run_suite(
            args.output_dir, args.quick, args.device, args.threads, args.seed, args.skip_memory, command_line()
        )
    return run_configuration(settings, args)
