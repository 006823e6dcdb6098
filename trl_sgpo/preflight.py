"""Arguments that cannot work, refused before any data or model is loaded: the command line's and the trainer's.

`SGPOConfig` checks its own fields when it is built; these checks need the other argument groups too (the model
options, the script options) or the installed packages. Each error names the problem and the fix. The checks
`SGPOTrainer` makes on its own arguments too (the model path, PEFT with a re-synced reference) live here once.
"""

import importlib.util
import os
from typing import Any

from transformers import AutoTokenizer

from .config import SGPOConfig


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
    check_peft_reference(model_args.use_peft, training_args.sync_ref_model_each_dpo_phase, command_line=True)
    check_model_path(model_args.model_name_or_path, option="--model_name_or_path")
    check_hub_model(model_args.model_name_or_path)
    _check_eval_options(script_args, training_args)
    check_installed(training_args, model_args)
    if training_args.push_to_hub:
        check_hub_push(training_args.hub_token)


# `--report_to` name -> the module it needs (transformers' integrations import these).
TRACKER_MODULES = {
    "wandb": "wandb",
    "trackio": "trackio",
    "tensorboard": "tensorboard",
    "comet_ml": "comet_ml",
    "mlflow": "mlflow",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "neptune": "neptune",
    "swanlab": "swanlab",
}
# `--attn_implementation` -> the package it needs.
ATTENTION_MODULES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


def check_installed(training_args: Any, model_args: Any) -> None:
    """A tracker named in ``--report_to`` or an attention implementation that is not installed, refused before the
    model loads (transformers fails on them later, with a long traceback)."""
    report_to = training_args.report_to or []
    for name in [report_to] if isinstance(report_to, str) else report_to:
        module = TRACKER_MODULES.get(name)
        if module and importlib.util.find_spec(module) is None:
            raise ImportError(
                f"--report_to {name} needs the {module!r} package, which is not installed: `pip install {module}`, "
                "or pick another tracker (--report_to none logs to the console only)."
            )
    attention = getattr(model_args, "attn_implementation", None)
    module = ATTENTION_MODULES.get(attention)
    if module and importlib.util.find_spec(module) is None:
        raise ImportError(
            f"--attn_implementation {attention} needs the {module!r} package, which is not installed (a CUDA GPU is "
            "needed too): install it, or use --attn_implementation sdpa."
        )


def _hub_unreachable() -> str | None:
    """Why the Hub cannot be used now (switched off, or not answering), or None."""
    from .data.files import is_offline

    if is_offline():
        return "the Hub is switched off (HF_HUB_OFFLINE)"
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=10)  # any answer will do: the Hub is reachable
    except Exception as error:  # no network, a proxy, a firewall: say why
        return f"the Hub at {constants.ENDPOINT} does not answer ({type(error).__name__}: {error})"
    return None


def check_hub_model(name: str | None) -> None:
    """A model named by a Hub id that is neither a local folder nor cached needs the Hub: refused where it cannot be
    reached, with the hint to write a local folder as ./name."""
    if name is None or os.path.isdir(os.path.expanduser(name)):
        return
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return  # downloaded before: transformers reads the cache
    why = _hub_unreachable()
    if why:
        raise FileNotFoundError(
            f"--model_name_or_path {name!r} is not a local folder (looked from {os.getcwd()!r}) nor a downloaded Hub "
            f"model, and {why}. For a local folder, check the path (write it as ./{name}); for a Hub model, go online "
            "once to download it."
        )


def check_hub_push(token: str | None = None) -> None:
    """``--push_to_hub`` needs a token (``--hub_token``, or the saved one) and a reachable Hub: refused before
    training, not after it."""
    from huggingface_hub import get_token

    why = _hub_unreachable()
    if why:
        raise ValueError(
            f"--push_to_hub needs the Hub, and {why}. Train without --push_to_hub and upload output_dir later "
            "(`hf upload`), or go online."
        )
    if token is None and get_token() is None:
        raise ValueError(
            "--push_to_hub needs a Hub token, and none is set: `hf auth login` or HF_TOKEN, or train without "
            "--push_to_hub and upload output_dir later (`hf upload`)."
        )


def check_peft_reference(uses_peft: bool, sync_ref_model: bool, command_line: bool = False) -> None:
    """PEFT's reference model is the base model with the adapter disabled: there is no copy to re-sync."""
    if not (uses_peft and sync_ref_model):
        return
    sync, peft = (
        ("--sync_ref_model_each_dpo_phase", "--use_peft")
        if command_line
        else ("sync_ref_model_each_dpo_phase", "PEFT")
    )
    fix = "Drop one of the two options." if command_line else f"Set {sync}=False or train without PEFT."
    raise ValueError(
        f"{sync} is not supported with {peft}: the reference model is the base model with the adapter disabled. {fix}"
    )


def check_model_path(name: str | None, option: str = "model") -> None:
    """A model named by a path must be a folder written by `save_pretrained`; anything else is a Hub id."""
    if name is None:
        return
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(
                f"{option} {name!r} is a folder without config.json: pass a folder written by "
                "`model.save_pretrained(...)` and `tokenizer.save_pretrained(...)`."
            )
    elif name.startswith((".", "/", "~")) or os.path.exists(path):
        what = "it is a file" if os.path.exists(path) else "it does not exist"
        or_object = "" if option.startswith("--") else ", or a model object"
        raise FileNotFoundError(
            f"{option} {name!r} is not a folder: {what} (looked for it from {os.getcwd()!r}). Pass a folder written "
            f"by `save_pretrained` or a Hub model id like 'Qwen/Qwen2.5-0.5B-Instruct'{or_object}."
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


def check_trainer_arguments(
    model: Any,
    args: Any,
    train_dataset: Any,
    processing_class: Any,
    peft_config: Any = None,
    reward_funcs: Any = None,
) -> tuple[Any, Any]:
    """`SGPOTrainer`'s own arguments, checked before the model loads: returns the config (a default `SGPOConfig`
    named after the model when none is given) and the tokenizer (loaded from ``model`` when it is a path or id)."""
    if reward_funcs is not None:
        raise ValueError(
            "SGPOTrainer takes no `reward_funcs`: SGPO builds its pairs without any reward (chosen = the "
            "improver's rewrite). Remove the argument, or use TRL's OnlineDPOTrainer for reward-ranked pairs."
        )
    if args is None:
        name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "")
        # a model built in Python has no name or path: name the folder after its class
        name = os.path.basename(os.path.normpath(name)) if name else type(model).__name__
        args = SGPOConfig(output_dir=f"{name}-SGPO")
    elif not isinstance(args, SGPOConfig):
        raise TypeError(f"`args` must be an SGPOConfig, got {type(args).__name__}. Build one with SGPOConfig(...).")
    if train_dataset is None:
        raise ValueError("`train_dataset` is required: prompt-completion rows whose completion is the reference.")
    if isinstance(model, str):
        check_model_path(model)
    if processing_class is None:
        if not isinstance(model, str):
            raise ValueError("`processing_class` (the tokenizer) is required when `model` is a model object.")
        processing_class = AutoTokenizer.from_pretrained(model, trust_remote_code=args.trust_remote_code)
    if processing_class.eos_token is None:
        raise ValueError(
            "The tokenizer has no EOS token: SGPO needs one to tell finished responses from cut ones. Set "
            "`tokenizer.eos_token` (for chat models, the end-of-turn token)."
        )
    check_peft_reference(peft_config is not None, args.sync_ref_model_each_dpo_phase)
    return args, processing_class
