"""The policy and reference models under DeepSpeed, where TRL's online DPO trainer cannot build them itself.

TRL 1.16's `OnlineDPOTrainer.__init__` loads a model given as a path with ``device_map="auto"``, which DeepSpeed
ZeRO-3 refuses ("not compatible with passing a device_map") and which leaves ZeRO-2 with a placed model, and it
builds the reference model with `create_reference_model`, which refuses ZeRO-3 outright. Under DeepSpeed the trainer
therefore loads a path itself (no ``device_map``: DeepSpeed places and, under ZeRO-3, partitions the weights; with
``zero3_init_flag`` at load time) and, under ZeRO-3 without PEFT, builds the reference model: loaded again from the
path, or copied from a model object that is not partitioned yet. A partitioned object cannot be copied: that is a
clear error naming the two ways out. ZeRO-3 partitions float32, bfloat16 and float16 parameters only (DeepSpeed's
``zero.Init`` asserts it deep inside the engine); a float64 model is refused here, before anything is built, with the
way out. Without DeepSpeed nothing changes.
"""

import copy
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.utils import logging


logger = logging.get_logger(__name__)


def deepspeed_stage(args: Any) -> int | None:
    """The ZeRO stage of the run (``args``: TrainingArguments), None without DeepSpeed."""
    plugin = getattr(args, "deepspeed_plugin", None)
    return None if plugin is None else int(plugin.zero_stage)


def is_partitioned(model: torch.nn.Module) -> bool:
    """Whether ZeRO-3 has partitioned the weights already (its parameters carry ``ds_id``)."""
    return any(hasattr(parameter, "ds_id") for parameter in model.parameters())


ZERO3_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_zero3_dtype(dtype: Any) -> None:
    """Refuse a dtype ZeRO-3 cannot partition (``dtype``: a torch dtype or its name), with the way out."""
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype, dtype)
    if isinstance(dtype, torch.dtype) and dtype not in ZERO3_DTYPES:
        raise ValueError(
            f"DeepSpeed ZeRO-3 partitions float32, bfloat16 and float16 parameters only, and the model is {dtype}: "
            "load it in float32 or bfloat16 (`--dtype float32`, or `model.float()` before passing it), or use ZeRO-2."
        )


def _load(path: str, model_init_kwargs: dict | None) -> PreTrainedModel:
    kwargs = dict(model_init_kwargs or {})
    kwargs.pop("device_map", None)  # DeepSpeed places (and under ZeRO-3 partitions) the weights itself
    dtype = kwargs.get("dtype", "auto")
    if isinstance(dtype, str) and dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def _frozen(model: PreTrainedModel) -> PreTrainedModel:
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


def models_for_deepspeed(model: Any, ref_model: Any, args: Any, peft_config: Any) -> tuple[Any, Any, bool]:
    """(model, ref_model, loaded): the models the parent trainer gets under DeepSpeed; unchanged otherwise.

    ``loaded`` says the model was loaded here from a path with ``args.model_init_kwargs`` (the parent must then not
    see them: it refuses them beside a model object).
    """
    stage = deepspeed_stage(args)
    if stage is None:
        return model, ref_model, False
    needs_reference = stage == 3 and ref_model is None and peft_config is None and not isinstance(model, PeftModel)
    if stage == 3:
        _check_zero3_dtype((args.model_init_kwargs or {}).get("dtype") if isinstance(model, str) else model.dtype)
    if isinstance(model, str):
        path = model
        model = _load(path, args.model_init_kwargs)
        if stage == 3:
            _check_zero3_dtype(model.dtype)  # "auto" takes the dtype the folder was saved in
        if needs_reference:
            ref_model = _frozen(_load(path, args.model_init_kwargs))
            logger.warning("DeepSpeed ZeRO-3: the DPO reference model is loaded a second time from %s.", path)
        return model, ref_model, True
    if needs_reference:
        if is_partitioned(model):
            raise ValueError(
                "DeepSpeed ZeRO-3 has partitioned the model already (it was loaded under `zero3_init_flag`), so the "
                "DPO reference model cannot be copied from it. Pass the model as a path (`SGPOTrainer(model="
                "'path/or/hub-id', ...)`; on the command line `--model_name_or_path`, which does this), or load the "
                "reference model the same way and pass `ref_model=`, or train with PEFT (its reference is the base "
                "model with the adapter off)."
            )
        ref_model = _frozen(copy.deepcopy(model))
        logger.warning(
            "DeepSpeed ZeRO-3: the DPO reference model is a frozen copy of the model, made before sharding."
        )
    return model, ref_model, False
