"""What the quality benchmarks' commands share: their flags, the settings those override, the report's header
(command, date, device), SGPO's defaults as the report records them, and the files a report is written to."""

import argparse
import json
import os
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any


BENCHMARKS_DIR = Path(__file__).resolve().parents[1]  # the command files, run again by the speed suite and sweep
RESULTS_DIR = BENCHMARKS_DIR / "results"


def parse_args(argv: list[str] | None, description: str, arms: list[str], checkpoint_help: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a few steps, one seed, one learning rate (CI)")
    parser.add_argument("--workers", type=int, default=1, help="parallel runs (one CPU thread each)")
    parser.add_argument("--arms", nargs="+", default=arms, choices=arms)
    parser.add_argument("--steps", type=int, help="override the number of updates")
    parser.add_argument("--learning-rates", type=float, nargs="+", help="override the search grid")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    parser.add_argument("--checkpoint", help=checkpoint_help)
    parser.add_argument("--output-dir", default=str(RESULTS_DIR))
    parser.add_argument("--render", metavar="JSON", help="only re-render the tables of an earlier run's JSON")
    return parser.parse_args(argv)


def apply_overrides(settings: Any, args: argparse.Namespace) -> None:
    """Set in ``settings`` the updates, grid, seeds and start the flags override."""
    for name in ("steps", "learning_rates", "seeds", "checkpoint"):
        value = getattr(args, name)
        if value:
            setattr(settings, name, tuple(value) if isinstance(value, list) else value)


def run_header(script: str, argv: list[str] | None, workers: int) -> dict[str, str]:
    """The command as run, the date and the device, as the report's first line states them."""
    return {
        "command": f"python benchmarks/{script} " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": date.today().isoformat(),
        "device": f"{platform.processor() or platform.machine()} CPU, {workers} worker(s), 1 thread each",
    }


def sgpo_defaults(names: tuple[str, ...]) -> dict[str, Any]:
    """The package's defaults of these `SGPOConfig` fields: what the ``sgpo`` arm ran with."""
    from trl_sgpo import SGPOConfig

    defaults = SGPOConfig(output_dir=tempfile.gettempdir(), use_cpu=True)
    return {name: getattr(defaults, name) for name in names}


def write_report(report: dict, table: str, output_dir: str, name: str) -> None:
    """Print the table and write it (``name``.md) and the report (``name``.json) into ``output_dir``."""
    print(table)
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, f"{name}.json"), "w") as handle:
        json.dump(report, handle, indent=1)
    with open(os.path.join(output_dir, f"{name}.md"), "w") as handle:
        handle.write(table)
