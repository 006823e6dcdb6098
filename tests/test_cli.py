"""The `trl-sgpo` command (and examples/sgpo.py): options, built-in defaults, and a short built-in run."""

import os
import subprocess
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM

from trl_sgpo.cli import BUILTIN_DEFAULTS, make_parser, parse_args
from trl_sgpo.config import sgpo_field_names


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sgpo.py"


def test_help_lists_the_sgpo_options_under_their_own_heading():
    text = make_parser().format_help()
    section = text[text.index("SGPO options:") :]
    for name in sgpo_field_names():
        assert f"--{name} " in section, name
    assert "--learning_rate" not in section  # parent options stay in their own list


def test_builtin_defaults_apply_only_without_model_and_data(tmp_path):
    _, builtin, _ = parse_args([])
    assert builtin.learning_rate == BUILTIN_DEFAULTS["learning_rate"]
    assert builtin.output_dir == BUILTIN_DEFAULTS["output_dir"]
    _, overridden, _ = parse_args(["--learning_rate", "3e-6"])
    assert overridden.learning_rate == 3e-6  # a flag beats the built-in default
    _, real, model_args = parse_args(
        ["--model_name_or_path", "org/model", "--dataset_name", "org/data", "--output_dir", str(tmp_path)]
    )
    assert real.learning_rate == 5e-7 and model_args.model_name_or_path == "org/model"  # TRL's default


def test_console_command_is_installed():
    completed = subprocess.run(["trl-sgpo", "--help"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0 and "SGPO options:" in completed.stdout


def test_short_builtin_run_prints_samples_and_quality_and_saves_a_loadable_model(tmp_path):
    output_dir = tmp_path / "run"
    command = [
        sys.executable,
        str(EXAMPLE),
        "--output_dir",
        str(output_dir),
        "--max_steps",
        "4",
        "--per_device_train_batch_size",
        "8",
        "--builtin_train_prompts",
        "64",
        "--builtin_eval_prompts",
        "16",
        "--sample_every_n_steps",
        "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "160"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "SGPO samples, step 2" in completed.stdout and "improved response" in completed.stdout
    assert "Held-out quality" in completed.stdout and "before" in completed.stdout
    model = AutoModelForCausalLM.from_pretrained(output_dir)
    assert model.num_parameters() > 0
    card = (output_dir / "README.md").read_text()
    assert "- sgpo" in card and "## SGPO configuration" in card
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert rerun.returncode != 0 and "is not empty" in rerun.stderr  # never writes over the first run
