"""The documentation's code runs, and the site builds.

Every fenced ```python block in ``docs/**/*.md`` and ``README.md`` is executed, each in a fresh namespace with a
fresh temporary directory as the working directory, so relative ``output_dir`` values land there. Snippets must be
self-contained, offline and fast: build the model and tokenizer with ``trl_sgpo.toy``
(``build_char_tokenizer``, ``build_tiny_model``) and the data with ``datasets.Dataset.from_list``.

Skipping a snippet: a snippet that needs network access (a Hub model or dataset) or a GPU is marked with an HTML
comment on the line before its opening fence (blank lines in between are allowed); the reason is shown by pytest::

    <!-- skip-test: downloads a model from the Hub -->
    ```python
    trainer = SGPOTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", ...)
    ```

The comment is invisible on the rendered page. Blocks in other languages (``bash``, ``yaml``, ...) are not run.

The site build runs ``mkdocs build --strict`` into a temporary directory (skipped when the ``docs`` extra, mkdocs,
mkdocs-material and mkdocstrings, is not installed).
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch


# Tiny models run faster on one thread, and two test workers on two cores must not fight over OpenMP threads.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
OPENING_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
SKIP_MARKER = re.compile(r"^\s*<!--\s*skip-test(?::\s*(?P<reason>.*?))?\s*-->\s*$")


def documentation_files() -> list[Path]:
    files = sorted(DOCS.rglob("*.md"))
    if (ROOT / "README.md").is_file():
        files.append(ROOT / "README.md")
    return files


def extract_snippets(path: Path) -> list[tuple[int, str, str | None]]:
    """(line number of the opening fence, code, skip reason or None) of every python block of ``path``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    snippets = []
    index = 0
    while index < len(lines):
        opening = OPENING_FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, fence = opening.group("indent"), opening.group("fence")
        language = (opening.group("info").split() or [""])[0].lstrip(".{").lower()
        closing = re.compile(rf"^{re.escape(indent)}{fence[0]}{{{len(fence)},}}\s*$")
        body_start = index + 1
        end = body_start
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        if language in ("python", "py"):
            body = [
                line.removeprefix(indent) if line.startswith(indent) else line.lstrip()
                for line in lines[body_start:end]
            ]
            previous = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
            marker = SKIP_MARKER.match(previous)
            reason = (marker.group("reason") or "marked skip-test") if marker else None
            snippets.append((index + 1, "\n".join(body) + "\n", reason))
        index = end + 1
    return snippets


def snippet_params():
    params = []
    for path in documentation_files():
        name = path.relative_to(ROOT).as_posix()
        for line, code, reason in extract_snippets(path):
            marks = [pytest.mark.skip(reason=f"skip-test: {reason}")] if reason else []
            params.append(pytest.param(name, line, code, id=f"{name}:{line}", marks=marks))
    return params


SNIPPETS = snippet_params()


def test_the_extractor_finds_the_snippets():
    assert len(SNIPPETS) >= 10, "the documentation lost its snippets, or the extractor stopped finding them"
    skipped = [param for param in SNIPPETS if param.marks]
    assert skipped, "no snippet is marked skip-test: the marker convention changed?"


@pytest.mark.parametrize(("page", "line", "code"), SNIPPETS)
def test_snippet_runs(page, line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    exec(compile(code, f"{page}:{line}", "exec"), namespace)  # noqa: S102


def test_every_logged_metric_is_documented():
    """Each name the package logs appears on the metrics page (f-string names: at least one expansion does).

    Names are found where they are logged: ``stats.add("name", ...)``, ``_metrics["name"]``, and the keys of the
    statistics dicts the objectives and `step_stats` return (``"name": values``)."""
    source = "\n".join(path.read_text(encoding="utf-8") for path in sorted((ROOT / "trl_sgpo").rglob("*.py")))
    page = (DOCS / "metrics.md").read_text(encoding="utf-8")
    names = set(re.findall(r'stats\.add\(\s*(f?"[^"]+")', source))
    names |= set(re.findall(r'_metrics\[\s*(f?"[^"]+")\s*\]', source))
    names |= set(re.findall(r'"((?:sgpo|rewards|logps|objective|val)/[\w/]+)":', source))
    assert {"sgpo/dpo_loss", "sgpo/improver_loss", "sgpo/response_length", "rewards/margins"} <= {
        name.lstrip("f").strip('"') for name in names
    }, "the logged metrics were not found: the patterns of this test are out of date"
    missing = []
    for literal in names:
        name = literal.lstrip("f").strip('"')
        pattern = re.escape(name)
        if literal.startswith("f"):  # f"sgpo/pairs_{reason}": any word in place of the field
            pattern = re.sub(r"\\\{[^}]*\\\}", r"\\w+", pattern)
        if not re.search(rf"`{pattern}`", page):
            missing.append(name)
    assert not missing, f"logged by the trainer but not documented in docs/metrics.md: {sorted(missing)}"


def _docs_tools_missing() -> str | None:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            return module
    return None


@pytest.mark.skipif(
    _docs_tools_missing() is not None,
    reason=f"the docs tools are not installed ({_docs_tools_missing()}): pip install -e '.[docs]'",
)
def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
        + ["--site-dir", str(site)],
        cwd=tmp_path,  # from another folder: every path in mkdocs.yml must be relative to the file, not the cwd
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"

    # The configuration tables are generated from the code: every SGPO field is on the page, no placeholder left.
    spec = importlib.util.spec_from_file_location("config_table", DOCS / "hooks" / "config_table.py")
    config_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config_table)
    configuration = (site / "configuration" / "index.html").read_text(encoding="utf-8")
    assert config_table.PLACEHOLDER not in configuration
    missing = [
        field.name for _, field in config_table.sgpo_fields() if f"<code>{field.name}</code>" not in configuration
    ]
    assert not missing, f"SGPOConfig fields missing from the generated configuration page: {missing}"


def test_every_documented_output_folder_is_git_ignored():
    """A user who runs the README's and the docs' commands in a clone finds no untracked output folders."""
    import shutil

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "examples").glob("*.py"))]
    text = "\n".join(page.read_text(encoding="utf-8") for page in pages)
    folders = set(re.findall(r"--output_dir ([\w.\-]+)", text)) | set(re.findall(r'output_dir="([\w.\-]+)"', text))
    folders |= {"sgpo-builtin-output", "trainer_output"}  # the built-in run's, and TRL's default
    assert len(folders) > 10, folders
    for folder in sorted(folders):
        ignored = subprocess.run(["git", "check-ignore", "-q", f"{folder}/"], cwd=ROOT).returncode == 0
        assert ignored, f"{folder}/ is written by a documented command and not in .gitignore"
