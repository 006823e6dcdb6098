"""What ``python benchmarks/speed.py`` runs without ``--model-size``: both speed configurations and the speculated
rewrite, one after the other, and one report with every goal.

    python benchmarks/speed.py            # 23 min on the 2-core machine: results/speed.{md,json} and the parts below
    python benchmarks/speed.py --quick    # the same parts at toy sizes (CI): a few minutes

The parts, each in its own process (a configuration's arms are interleaved and paired inside its process):

- ``small``: the random 3.67M-parameter Llama with a 4096-token BPE, every arm, fixed completion lengths, peak
  memory (``speed.py --model-size small``; results/speed_small.{md,json}); ``--quick``: the tiny one;
- ``smollm2``: SmolLM2-135M-Instruct with its weights, tokenizer and chat template on the real task's prompts, sampled
  lengths ending at its end of turn, LoRA, the four arms the goals compare (``speed.py --model-size smollm2 --lora
  ...``; results/speed_smollm2.{md,json}); ``--quick``: two prompts, eight tokens, timing only;
- ``speculation``: the improver's rewrite speculated from its draft on the toy world's checkpoint
  (``speculation.py``; results/speculation.{md,json}).

The goal table gathers each part's goals as the part reported them (a timing goal is met when the upper quartile of
its paired per-repeat ratio is within the target); none is recomputed or adjusted here.
"""

import datetime
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.protocol.command import BENCHMARKS_DIR
from benchmarks.real.smollm2 import default_cache_dir, gguf_folder
from benchmarks.speed.report import goal_cells, goal_entry


ROOT = BENCHMARKS_DIR.parent  # the parts run from the repository root, as a user runs them
SMOLLM2_ARMS = ("online_dpo", "online_dpo_rm", "sgpo_dpo", "sgpo_improver")


@dataclass(frozen=True)
class Part:
    """One process of the suite: its name, what it measures, the script and its arguments, the JSON it writes."""

    name: str
    what: str
    script: str
    arguments: tuple[str, ...]
    results_file: str

    def command(self, output_dir: Path, common: list[str]) -> list[str]:
        """The part's command line, run from the repository root (its reports then name the script as a user would)."""
        script, output = f"benchmarks/{self.script}", output_dir.resolve()
        if output.is_relative_to(ROOT):  # the part runs from the repository root: its reports say results/
            output = output.relative_to(ROOT)
        return [sys.executable, script, *self.arguments, *common, "--output-dir", str(output)]


def parts(quick: bool) -> list[Part]:
    """The suite's parts, at full or at ``--quick`` sizes."""
    smollm2 = ("--model-size", "smollm2", "--lora", "--arms", *SMOLLM2_ARMS)
    if quick:
        return [
            Part(
                "tiny", "random Llama 'tiny', every arm", "speed.py", ("--model-size", "tiny", "--quick"), "speed_tiny"
            ),
            Part(
                "smollm2",
                "SmolLM2-135M-Instruct, LoRA, sampled lengths (quick: 2 prompts, 8 tokens, timing only)",
                "speed.py",
                (
                    *smollm2,
                    "--quick",
                    "--batch-size",
                    "2",
                    "--max-new-tokens",
                    "8",
                    "--repeats",
                    "2",
                    "--warmup",
                    "0",
                    "--skip-memory",
                ),
                "speed_smollm2",
            ),
            Part("speculation", "speculated rewrite, toy world", "speculation.py", ("--quick",), "speculation"),
        ]
    return [
        Part(
            "small",
            "random Llama 'small' (3.67M), 4096-token BPE, every arm",
            "speed.py",
            ("--model-size", "small"),
            "speed_small",
        ),
        Part(
            "smollm2",
            "SmolLM2-135M-Instruct, its tokenizer and template, LoRA, sampled lengths",
            "speed.py",
            (*smollm2, "--repeats", "6", "--warmup", "1"),
            "speed_smollm2",
        ),
        Part("speculation", "speculated rewrite, toy world", "speculation.py", (), "speculation"),
    ]


def common_arguments(part: Part, device: str, threads: int, seed: int, skip_memory: bool) -> list[str]:
    """The suite-wide flags a part takes (speculation.py runs on the CPU with its own seeds)."""
    if part.script == "speculation.py":
        return ["--threads", str(threads)]
    common = ["--device", device, "--threads", str(threads), "--seed", str(seed)]
    return [*common, "--skip-memory"] if skip_memory and "--skip-memory" not in part.arguments else common


def speculation_goal(report: dict[str, Any]) -> dict[str, Any]:
    """speculation.py's goal as a goal row: greedy speculated rewrite / draft generation, paired IQR."""
    ratio = report["results"]["greedy"]["summary"]["speculated_vs_draft"]
    return goal_entry(
        "speculated_rewrite_vs_draft",
        "Speculated rewrite generation / the draft's generation (greedy rewrites)",
        report["goal"]["target"],
        ratio["median"],
        ratio["q1"],
        ratio["q3"],
    )


def part_goals(part: Part, results: dict[str, Any]) -> list[dict[str, Any]]:
    goals = [speculation_goal(results)] if part.script == "speculation.py" else results["goals"]
    return [{"configuration": part.name, **goal} for goal in goals]


def check_smollm2_available() -> None:
    """Fail before the first part runs where SmolLM2 cannot be had (its conversion needs two packages)."""
    if not (default_cache_dir() / "SmolLM2-135M-Instruct" / "config.json").is_file():
        gguf_folder()  # raises, naming the install command, where the packages are missing


def demoted(report: str) -> str:
    """A part's markdown report under the suite's heading: its title dropped, its sections one level down."""
    lines = report.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join("#" + line if line.startswith("## ") else line for line in lines).strip() + "\n"


def markdown(report: dict[str, Any], sections: dict[str, str]) -> str:
    lines = [
        "# Speed: SGPO's steps against TRL's OnlineDPOTrainer, both configurations, and the speculated rewrite",
        "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}; {report['minutes']:.1f} min; each part in its own process, one after the other",
        "",
        "| part | what | command | report |",
        "|---|---|---|---|",
    ]
    for part in report["parts"]:
        lines.append(f"| {part['name']} | {part['what']} | `{part['command']}` | `{part['results_file']}.md` |")
    lines += [
        "",
        "## Goals",
        "",
        "A timing goal is met when the upper quartile of its paired per-repeat ratio is within the target; a memory "
        "goal (one measurement per arm) by its value. The step and memory goals are judged on the SmolLM2 "
        "configuration, the speculation goal on the toy world; the small configuration's are shown beside them.",
        "",
        "| part | goal | target | value (paired IQR) | |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {goal['configuration']} | {goal['what']} | {goal_cells(goal)}" for goal in report["goals"]]
    for part in report["parts"]:
        lines += ["", f"## {part['name']}: {part['what']}", "", demoted(sections[part["name"]]).rstrip()]
    return "\n".join(lines) + "\n"


def run(
    output_dir: Path, quick: bool, device: str, threads: int, seed: int, skip_memory: bool, command: str
) -> dict[str, Any]:
    """Every part in turn, each writing its own report into ``output_dir``; then speed.{md,json} there."""
    selected = parts(quick)
    if any(part.name == "smollm2" for part in selected):
        check_smollm2_available()
    output_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done, sections, goals = [], {}, []
    for part in selected:
        words = part.command(output_dir, common_arguments(part, device, threads, seed, skip_memory))
        print(f"[speed] {part.name}: {' '.join(words[1:])}", file=sys.stderr, flush=True)
        part_started = datetime.datetime.now(datetime.timezone.utc)
        completed = subprocess.run(words, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, check=False)
        if completed.returncode != 0:
            raise SystemExit(f"[speed] part {part.name!r} failed with exit code {completed.returncode}: {words}")
        results = json.loads((output_dir / f"{part.results_file}.json").read_text())
        sections[part.name] = (output_dir / f"{part.results_file}.md").read_text()
        goals += part_goals(part, results)
        seconds = (datetime.datetime.now(datetime.timezone.utc) - part_started).total_seconds()
        shown = ["python", *words[1:-2]]  # without the output folder
        done.append(
            {
                "name": part.name,
                "what": part.what,
                "command": " ".join(shown),
                "results_file": part.results_file,
                "seconds": seconds,
                "results": results,
            }
        )
        print(f"[speed] {part.name}: {seconds:.0f} s", file=sys.stderr, flush=True)
    report = {
        "command": command,
        "date": started.isoformat(timespec="seconds"),
        "minutes": (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds() / 60,
        "goals": goals,
        "parts": done,
    }
    table = markdown(report, sections)
    print(table)
    (output_dir / "speed.json").write_text(json.dumps(report, indent=1) + "\n")
    (output_dir / "speed.md").write_text(table)
    return report
