"""Command-line options that cannot work together, refused before any data or model is loaded.

`SGPOConfig` checks its own fields when it is built; these checks need the other argument groups too (the model
options, the script options) or the installed packages. Each error names the problem and the fix.
"""

import importlib.util
import os
from typing import Any


def check_options(script_args: Any, training_args: Any, model_args: Any) -> None:
    """Raise on options of a real-model run that would fail later, after minutes of loading."""
    if (script_args.dataset_name is None) != (model_args.model_name_or_path is None):
        raise ValueError(
            "Pass both --model_name_or_path and --dataset_name to train your own model, or neither to run the "
            "built-in world."
        )
    quantized = "--load_in_4bit" if model_args.load_in_4bit else "--load_in_8bit" if model_args.load_in_8bit else None
    if quantized and importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            f"{quantized} needs bitsandbytes, which is not installed: `pip install bitsandbytes` (a CUDA GPU is "
            f"needed), or drop {quantized}."
        )
    if quantized and not model_args.use_peft:
        raise ValueError(
            f"{quantized} loads frozen quantized weights, which cannot be trained directly: add --use_peft to train "
            f"a LoRA adapter on top (QLoRA), or drop {quantized}."
        )
    if model_args.use_peft and training_args.sync_ref_model_each_dpo_phase:
        raise ValueError(
            "--sync_ref_model_each_dpo_phase is not supported with --use_peft: the reference model is the base model "
            "with the adapter disabled. Drop one of the two options."
        )
    _check_model_path(model_args.model_name_or_path)
    _check_eval_options(script_args, training_args)


def _check_model_path(name: str | None) -> None:
    if name is None:
        return
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(
                f"--model_name_or_path {name!r} is a folder without config.json: pass a folder written by "
                "`model.save_pretrained(...)` and `tokenizer.save_pretrained(...)`."
            )
    elif name.startswith((".", "/", "~")) or os.path.exists(path):
        raise FileNotFoundError(
            f"--model_name_or_path {name!r} is not a folder (looked for it from {os.getcwd()!r}). Pass a folder "
            "written by `save_pretrained`, or a Hub model id like 'Qwen/Qwen2.5-0.5B-Instruct'."
        )


def _check_eval_options(script_args: Any, training_args: Any) -> None:
    if getattr(script_args, "eval_dataset_name", None) and training_args.eval_strategy == "no":
        raise ValueError(
            "--eval_dataset_name is given but --eval_strategy is 'no', so it would never be used: add "
            "--eval_strategy steps --eval_steps N (or --eval_strategy epoch), or drop --eval_dataset_name."
        )


def check_eval_data(eval_dataset: Any, script_args: Any, training_args: Any) -> None:
    """With an eval strategy there must be eval data; said here rather than by a `Trainer` error after loading."""
    if training_args.eval_strategy != "no" and eval_dataset is None:
        raise ValueError(
            f"--eval_strategy {training_args.eval_strategy} needs eval data, and --dataset_name "
            f"{script_args.dataset_name!r} has no {script_args.dataset_test_split!r} split. Pass an eval file or "
            "folder with --eval_dataset_name, name the split with --dataset_test_split, or use --eval_strategy no."
        )
