"""The `trl-sgpo` command (and examples/sgpo.py): options, built-in defaults, and a short built-in run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from trl_sgpo import SGPOConfig
from trl_sgpo.cli.command import BUILTIN_DEFAULTS, make_parser, parse_args
from trl_sgpo.config import sgpo_field_names


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sgpo.py"


def test_help_lists_the_sgpo_options_under_their_own_heading():
    text = make_parser().format_help()
    section = text[text.index("SGPO options:") :]
    for name in sgpo_field_names():
        assert f"--{name} " in section, name
    assert "--learning_rate" not in section  # parent options stay in their own list


def _real_run_settings(training_args) -> tuple:
    return (
        training_args.learning_rate,
        training_args.max_steps,
        training_args.per_device_train_batch_size,
        training_args.max_new_tokens,
        str(training_args.save_strategy),
    )


@pytest.mark.parametrize(
    "spelling",
    ["underscores", "hyphens", "equals", "config file"],
)
def test_a_model_and_data_get_the_real_defaults_whatever_the_spelling(tmp_path, spelling):
    """The built-in world's settings (lr 1e-4, 60 steps, no checkpoints) never reach a run on the user's model."""
    if spelling == "config file":
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text("model_name_or_path: org/model\ndataset_name: data.jsonl\n")
        argv = ["--config", str(recipe)]
    else:
        flags = {
            "underscores": ["--model_name_or_path", "org/model", "--dataset_name", "data.jsonl"],
            "hyphens": ["--model-name-or-path", "org/model", "--dataset-name", "data.jsonl"],
            "equals": ["--model-name-or-path=org/model", "--dataset_name=data.jsonl"],
        }
        argv = flags[spelling]
    script_args, training_args, model_args = parse_args(argv)
    assert (model_args.model_name_or_path, script_args.dataset_name) == ("org/model", "data.jsonl")
    defaults = SGPOConfig(output_dir=str(tmp_path))
    assert _real_run_settings(training_args) == _real_run_settings(defaults)
    assert training_args.learning_rate != BUILTIN_DEFAULTS["learning_rate"]
    assert training_args.output_dir != BUILTIN_DEFAULTS["output_dir"]


@pytest.mark.parametrize("argv", [[], ["--learning-rate", "3e-6"], ["--learning_rate=3e-6"], ["--config", "RECIPE"]])
def test_the_builtin_world_keeps_its_defaults_under_the_users_flags(tmp_path, argv):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learning_rate: 3.0e-6\n")
    _, training_args, _ = parse_args([str(recipe) if arg == "RECIPE" else arg for arg in argv])
    assert training_args.learning_rate == (3e-6 if argv else BUILTIN_DEFAULTS["learning_rate"])  # a flag wins
    assert training_args.max_steps == BUILTIN_DEFAULTS["max_steps"]
    assert training_args.output_dir == BUILTIN_DEFAULTS["output_dir"]


def test_help_shows_the_real_runs_defaults_and_names_the_builtin_ones_apart():
    text = " ".join(make_parser().format_help().split())
    real = SGPOConfig(output_dir="x")
    for flag, value in (
        ("--learning-rate LEARNING_RATE", real.learning_rate),
        ("--max-new-tokens", real.max_new_tokens),
    ):
        entry = text[text.index(flag) :]  # the option's entry in the list (the usage line has only underscores)
        assert entry[: entry.index(")") + 1].endswith(f"(default: {value})"), flag
    builtin = text[text.index("Without --model_name_or_path and --dataset_name the built-in world runs") :]
    assert f"learning_rate={BUILTIN_DEFAULTS['learning_rate']}" in builtin
    assert f"max_new_tokens={BUILTIN_DEFAULTS['max_new_tokens']}" in builtin


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
        "--logging_steps",
        "2",  # the built-in world logs completions (log_completions) at each log
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "160"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "SGPO samples, step 2" in completed.stdout and "improved response" in completed.stdout
    assert "SGPO samples, step 4" in completed.stdout and "reference" in completed.stdout
    assert "Held-out quality" in completed.stdout and "before" in completed.stdout
    model = AutoModelForCausalLM.from_pretrained(output_dir)
    assert model.num_parameters() > 0
    card = (output_dir / "README.md").read_text()
    assert "- sgpo" in card and "## SGPO configuration" in card
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert rerun.returncode != 0 and "is not empty" in rerun.stderr  # never writes over the first run


def test_a_refused_run_prints_one_line_without_a_traceback(tmp_path):
    """The command line's refusals are one line naming the problem and the fix, exit status 2, nothing loaded."""
    from trl_sgpo.toy import build_char_tokenizer

    build_char_tokenizer().save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "config.json").write_text("{}")  # no weights: loading the model would fail otherwise
    data = tmp_path / "data.jsonl"
    data.write_text('{"messages": [{"role": "user", "text": "a"}, {"role": "assistant", "text": "b"}]}\n')
    command = ["trl-sgpo", "--model-name-or-path", str(tmp_path / "model"), "--dataset-name", str(data)]
    completed = subprocess.run(
        [*command, "--output_dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 2, completed.stderr[-2000:]
    lines = [line for line in completed.stderr.splitlines() if line.startswith("trl-sgpo: error:")]
    assert len(lines) == 1 and "under 'text' instead of 'content'" in lines[0], completed.stderr[-2000:]
    assert "Traceback" not in completed.stderr


def test_an_invalid_choice_is_refused_by_the_parser_before_anything_loads(capsys):
    with pytest.raises(SystemExit) as caught:
        parse_args(["--model_name_or_path", "m", "--dataset_name", "d.jsonl", "--loss_type", "hinge"])
    assert caught.value.code == 2
    assert "invalid choice: 'hinge' (choose from 'sigmoid', 'ipo')" in capsys.readouterr().err


def test_a_single_cpu_process_under_accelerate_launch_uses_every_core(monkeypatch, caplog):
    """`accelerate launch` sets OMP_NUM_THREADS=1 by default: one core of many for the headline command."""
    import logging
    import os
    from types import SimpleNamespace

    import torch

    from trl_sgpo.cli.command import use_all_cores_under_accelerate

    args = SimpleNamespace(use_cpu=True)
    threads = torch.get_num_threads()
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND", raising=False)
    assert use_all_cores_under_accelerate(args) is None  # plain python: the user's threads
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")
    try:
        with caplog.at_level(logging.WARNING, logger="trl_sgpo.cli"):
            assert use_all_cores_under_accelerate(args) == 6
        assert torch.get_num_threads() == 6 and "using all 6" in caplog.text
        torch.set_num_threads(threads)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice (--num_cpu_threads_per_process 3)
        assert use_all_cores_under_accelerate(args) is None
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        monkeypatch.setenv("WORLD_SIZE", "2")  # several processes share the cores
        assert use_all_cores_under_accelerate(args) is None
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(threads)


def test_a_refusal_under_accelerate_launch_is_one_line_without_a_traceback(tmp_path):
    """`accelerate launch` reprints a failed child's last lines and a CalledProcessError traceback; a refusal asks it
    to exit quietly instead, so the one line is all the user reads (and the status is not 0)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "sgpo.py"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1"]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no", "--cpu", str(script)]
    command += ["--model_name_or_path", "./missing", "--dataset_name", "data.jsonl", "--output_dir", "out"]
    (tmp_path / "data.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode != 0
    assert [line for line in lines if "trl-sgpo: error:" in line] == lines[-1:], lines
    assert "is not a folder" in lines[-1] and not any("Traceback" in line for line in lines), lines


def test_use_peft_at_the_full_fine_tuning_rate_gets_the_lora_rates_and_says_so(caplog, tmp_path):
    from trl_sgpo.cli.command import LORA_RATES, apply_lora_rates
    from trl_sgpo.config import SGPOConfig

    args = SGPOConfig(output_dir=str(tmp_path), use_cpu=True)
    with caplog.at_level("WARNING"):
        changed = apply_lora_rates(args, use_peft=True)
    assert changed == LORA_RATES and (args.learning_rate, args.improver_learning_rate) == tuple(LORA_RATES.values())
    assert "would barely move a LoRA adapter" in caplog.text and "--learning_rate 0.0001" in caplog.text
    own = SGPOConfig(output_dir=str(tmp_path), use_cpu=True, learning_rate=2e-5, improver_learning_rate=1e-4)
    assert apply_lora_rates(own, use_peft=True) == {} and own.learning_rate == 2e-5  # the user's rates stay
    full = SGPOConfig(output_dir=str(tmp_path), use_cpu=True)
    assert apply_lora_rates(full, use_peft=False) == {} and full.learning_rate == 5e-7
