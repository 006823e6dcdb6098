"""The user's path end to end: a model saved with `save_pretrained`, their own data file, the command line.

Each run really trains a few steps and saves something that is loaded again (model or adapter, tokenizer, card):

| run | entry point | model / tokenizer | data | training |
| --- | --- | --- | --- | --- |
| README command | `accelerate launch examples/sgpo.py` | Llama / char | JSONL, conversational | LoRA |
| recipe | `trl-sgpo --config recipe.yaml` | GPT-2 / word | Parquet, standard; eval CSV | full |
| messages + resume | `cli.main` twice | Llama / char | JSON, `messages` column | full, resumed |
| saved folder | `cli.main` | GPT-2 / word | `save_to_disk` folder, train + test | LoRA, eval |
| CSV | `cli.main` | Llama / char | CSV, standard | full |
"""

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_sgpo.cli.command import main

from .user_files import save_data, save_models


ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "WANDB_DISABLED": "true",
}
# A few short steps; every flag here is also a recipe key.
FAST = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--max_new_tokens", "8", "--disable_tqdm", "true"]


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> dict[str, Path]:
    """The models and data files, built once for the module."""
    root = tmp_path_factory.mktemp("user")
    return {**save_models(root), **save_data(root), "root": root}


def readme_command() -> str:
    """The real-model command shown in the README (the first ``accelerate launch`` line with a local model)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^accelerate launch examples/sgpo\.py --model_name_or_path \./.*$", readme, flags=re.M)
    assert match, "the README lost its real-model command"
    return match.group(0)


def assert_card(folder: Path, model_words: str) -> None:
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "- sgpo" in card and "## SGPO configuration" in card
    assert "[None]" not in card and "huggingface.co/None" not in card and model_words in card, card[:800]


def assert_model_changed(folder: Path, base: Path) -> None:
    """A full model saved in ``folder`` loads, and training changed its weights."""
    trained = AutoModelForCausalLM.from_pretrained(folder)
    start = AutoModelForCausalLM.from_pretrained(base)
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values()))
    AutoTokenizer.from_pretrained(folder)


def assert_adapter(folder: Path, base: Path) -> None:
    """An adapter saved in ``folder`` loads onto its base model, with the saved tokenizer."""
    assert (folder / "adapter_config.json").is_file() and not (folder / "model.safetensors").exists()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder)
    assert model.peft_config["default"].peft_type == "LORA"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template is not None


@pytest.mark.slow
def test_readme_command_trains_a_lora_adapter_through_accelerate_launch(user, tmp_path):
    # The user's folder: their model as ./my-model, their data as data.jsonl, and the repo's examples/.
    (tmp_path / "my-model").symlink_to(user["llama-char"])
    (tmp_path / "data.jsonl").symlink_to(user["jsonl"])
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    command = readme_command()
    assert command == (
        "accelerate launch examples/sgpo.py --model_name_or_path ./my-model --dataset_name data.jsonl "
        "--output_dir out --use_peft"
    )
    completed = subprocess.run(
        shlex.split(command), cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = tmp_path / "out"
    assert_adapter(out, user["llama-char"])
    assert_card(out, "the local model `./my-model` on the local data `data.jsonl`")


@pytest.mark.slow
def test_trl_sgpo_with_a_yaml_recipe_full_fine_tuning_and_an_eval_file(user, tmp_path):
    recipe = {
        "model_name_or_path": str(user["gpt2-word"]),
        "dataset_name": str(user["parquet"]),
        "eval_dataset_name": str(user["eval_csv"]),
        "eval_strategy": "steps",
        "eval_steps": 1,
        "output_dir": str(tmp_path / "out"),
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "max_new_tokens": 8,
        "learning_rate": 1.0e-3,
        "logging_steps": 1,
        "improver_target": "reference",
        "disable_tqdm": True,
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    completed = subprocess.run(
        ["trl-sgpo", "--config", "recipe.yaml"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "'eval_loss'" in completed.stdout + completed.stderr  # the eval file was scored
    assert_model_changed(tmp_path / "out", user["gpt2-word"])
    assert_card(tmp_path / "out", "the local model")
    assert "| `improver_target` | `reference` |" in (tmp_path / "out" / "README.md").read_text()


def test_messages_json_trains_and_resumes_from_a_checkpoint(user, tmp_path):
    out = tmp_path / "out"
    common = ["--model_name_or_path", str(user["llama-char"]), "--dataset_name", str(user["json_messages"])]
    common += ["--output_dir", str(out), "--save_steps", "1", "--learning_rate", "1e-3", *FAST]
    first = main(common)
    assert first["epoch"] > 0 and (out / "checkpoint-2").is_dir()
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2

    resumed = main([*common, "--max_steps", "3", "--resume_from_checkpoint", str(out / "checkpoint-2")])
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and resumed["train_runtime"] > 0
    assert_model_changed(out, user["llama-char"])
    assert_card(out, "on the local data `messages.json`")


def test_save_to_disk_folder_with_a_test_split_trains_lora_and_evaluates(user, tmp_path):
    out = tmp_path / "out"
    metrics = main(
        ["--model_name_or_path", str(user["gpt2-word"]), "--dataset_name", str(user["saved"])]
        + ["--output_dir", str(out), "--use_peft", "--eval_strategy", "steps", "--eval_steps", "2", *FAST]
    )
    assert metrics["epoch"] > 0
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert any("eval_loss" in entry for entry in state["log_history"])  # the folder's test split was scored
    assert_adapter(out, user["gpt2-word"])
    assert_card(out, "on the local data `saved_dataset`")


def test_csv_standard_rows_full_fine_tuning(user, tmp_path):
    out = tmp_path / "out"
    main(
        ["--model_name_or_path", str(user["llama-char"]), "--dataset_name", str(user["csv"])]
        + ["--output_dir", str(out), "--learning_rate", "1e-3", *FAST]
    )
    assert_model_changed(out, user["llama-char"])
    assert_card(out, "on the local data `data.csv`")
