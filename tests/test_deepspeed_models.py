"""`deepspeed_models`: the models TRL's online DPO trainer cannot build under DeepSpeed (no DeepSpeed needed)."""

from types import SimpleNamespace

import pytest
import torch
from transformers.testing_utils import CaptureLogger

from trl_sgpo.run.deepspeed_models import logger, models_for_deepspeed

from .helpers import tiny_model
from .user_files import save_models


def _args(stage: int | None, **kwargs) -> SimpleNamespace:
    plugin = None if stage is None else SimpleNamespace(zero_stage=stage)
    return SimpleNamespace(deepspeed_plugin=plugin, model_init_kwargs=kwargs.get("model_init_kwargs"))


def test_without_deepspeed_nothing_changes(tokenizer):
    model = tiny_model(tokenizer)
    assert models_for_deepspeed(model, None, _args(None), None) == (model, None, False)
    assert models_for_deepspeed("some/path", None, _args(None), None) == ("some/path", None, False)


def test_zero3_copies_an_unpartitioned_model_into_a_frozen_reference(tokenizer):
    model = tiny_model(tokenizer)
    with CaptureLogger(logger) as captured:
        same, reference, loaded = models_for_deepspeed(model, None, _args(3), None)
    assert "the DPO reference model is a frozen copy of the model" in captured.out  # said where a user sees it
    assert same is model and not loaded and reference is not model
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters()))
    assert not any(p.requires_grad for p in reference.parameters()) and not reference.training
    # ZeRO-2 keeps the parent's own reference copy; PEFT needs none (the adapter off is the reference)
    assert models_for_deepspeed(model, None, _args(2), None)[1] is None
    assert models_for_deepspeed(model, None, _args(3), peft_config=object())[1] is None


def test_zero3_refuses_to_copy_a_partitioned_model_and_says_how_to_pass_it(tokenizer):
    model = tiny_model(tokenizer)
    next(model.parameters()).ds_id = 0  # what ZeRO-3's zero.Init leaves on every parameter
    with pytest.raises(ValueError, match="Pass the model as a path.*--model_name_or_path.*ref_model="):
        models_for_deepspeed(model, None, _args(3), None)
    given = tiny_model(tokenizer)
    assert models_for_deepspeed(model, given, _args(3), None)[1] is given  # a reference passed in is used


def test_a_path_is_loaded_without_a_device_map_and_twice_under_zero3(tmp_path):
    folder = save_models(tmp_path)["llama-char"]
    kwargs = {"device_map": "auto", "dtype": "bfloat16"}
    model, reference, loaded = models_for_deepspeed(str(folder), None, _args(3, model_init_kwargs=kwargs), None)
    assert loaded and reference is not None and reference is not model
    assert next(model.parameters()).dtype == torch.bfloat16 and not hasattr(model, "hf_device_map")
    assert kwargs == {"device_map": "auto", "dtype": "bfloat16"}  # the user's settings are left as they were
    model, reference, _ = models_for_deepspeed(str(folder), None, _args(2), None)
    assert reference is None  # ZeRO-2: the parent copies the loaded model


def test_zero3_refuses_a_float64_model_before_building_anything(tmp_path, tokenizer):
    # DeepSpeed's zero.Init would assert "Invalid data type torch.float64" deep inside the engine, on every rank.
    folder = save_models(tmp_path)["llama-char"]
    with pytest.raises(ValueError, match="ZeRO-3 partitions float32, bfloat16 and float16.*torch.float64.*--dtype"):
        models_for_deepspeed(str(folder), None, _args(3, model_init_kwargs={"dtype": "float64"}), None)
    with pytest.raises(ValueError, match="torch.float64.*model.float()"):
        models_for_deepspeed(tiny_model(tokenizer).double(), None, _args(3), None)
    float64 = tiny_model(tokenizer).double()
    assert models_for_deepspeed(float64, None, _args(2), None)[0] is float64  # ZeRO-2 trains float64 (tested)
    assert models_for_deepspeed(tiny_model(tokenizer), None, _args(3), None)[1] is not None  # float32 goes through
