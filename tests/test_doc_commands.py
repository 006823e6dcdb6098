"""Every `examples/sgpo.py` command in the docs and the README parses: its flags exist and its values are valid.

The commands are read from the ```bash blocks (line continuations joined, `[optional]` parts and `--config` runs
left out); only the part after ``examples/sgpo.py`` is parsed, by the program's own parser, without running it.
"""

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from trl_sgpo.cli.command import parse_args


ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
BASH_BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)


def documented_commands() -> list[tuple[str, list[str]]]:
    commands = []
    for page in PAGES:
        for block in BASH_BLOCK.findall(page.read_text()):
            text = re.sub(r"\\\n\s*", " ", re.sub(r"(?m)^\s+", "", block))  # dedent (tabbed blocks), join lines
            for line in text.splitlines():
                line = re.sub(r"\[[^\]]*\]", "", line.split("#")[0])  # drop comments and [optional] parts
                if "examples/sgpo.py" not in line:
                    continue
                argv = shlex.split(line.split("examples/sgpo.py", 1)[1])
                if "--config" in argv:  # a recipe file's run: the file is not here
                    continue
                commands.append((f"{page.name}: {' '.join(argv)[:60]}", argv))
    return commands


COMMANDS = documented_commands()


def test_the_docs_show_real_model_commands():
    assert len([argv for _, argv in COMMANDS if "--model_name_or_path" in argv]) >= 14


@pytest.mark.parametrize("argv", [argv for _, argv in COMMANDS], ids=[name for name, _ in COMMANDS])
def test_a_documented_command_parses(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # SGPOConfig may create nothing, but keep any side effect out of the repository
    if "--use_vllm" in argv and importlib.util.find_spec("vllm") is None:
        pytest.skip("the config refuses use_vllm without vLLM installed (a CUDA-only package)")
    script_args, training_args, model_args = parse_args(argv)
    if "--model_name_or_path" in argv:
        assert model_args.model_name_or_path and script_args.dataset_name
