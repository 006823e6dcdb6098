"""How the cost of an SGPO DPO-phase step grows with completion length and batch size, against TRL's OnlineDPO.

    python benchmarks/speed_sweep.py --workers 2   # SmolLM2-135M-Instruct, LoRA: results/speed_sweep.{md,json}
    python benchmarks/speed_sweep.py --quick         # the tiny random Llama, two small points: seconds, for CI

Each point of the grid (completion length x prompts per step) is one run of ``benchmarks/speed.py`` in its own
process, timing-only, with the arms ``online_dpo`` (free reward), ``online_dpo_rm`` (a reward model of the policy's
size) and ``sgpo_dpo`` interleaved as there, and every completion exactly the point's length (``--lengths fixed``:
EOS suppressed before the last position and forced at it, so every arm generates the same number of tokens; a real
model's own answers to the real task end after a dozen tokens, which would hide the length axis). The table gives,
per point, the SGPO / OnlineDPO paired ratios (median and inter-quartile range over the repeats), and where each
arm's time goes: SGPO generates the draft and then the rewrite one after the other (twice the sequential decode
steps of OnlineDPO's two samples in one call), while it scores the pair packed, the prompt encoded once.

Points run ``--workers`` at a time, one CPU thread each (a point's arms are paired within its own process, so a
point running beside another slows all its arms alike).
"""

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.protocol.command import BENCHMARKS_DIR, RESULTS_DIR


ARMS = ("online_dpo", "online_dpo_rm", "sgpo_dpo")
DEFAULT_LENGTHS = (32, 128)
DEFAULT_BATCHES = (4, 16)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", help=f"completion lengths (default {DEFAULT_LENGTHS})")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help=f"prompts per step (default {DEFAULT_BATCHES})")
    parser.add_argument("--repeats", type=int, default=4, help="timed steps per arm and point")
    parser.add_argument("--workers", type=int, default=1, help="points run at a time (one CPU thread each)")
    parser.add_argument("--full", action="store_true", help="full fine-tuning (default: LoRA r=8)")
    parser.add_argument("--quick", action="store_true", help="the tiny random model, lengths 8/16, batches 2/4")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    for name in ("lengths", "batch_sizes"):
        values = getattr(args, name)
        if values and min(values) < 2:
            parser.error(f"--{name.replace('_', '-')} must all be >= 2")
    if args.repeats < 2 or args.workers < 1:
        parser.error("--repeats must be >= 2 (a paired range needs two steps) and --workers >= 1")
    return args


def point_command(args: argparse.Namespace, length: int, batch: int, output_dir: Path) -> list[str]:
    """The ``speed.py`` command of one point."""
    model = ["--quick", "--model-size", "tiny"] if args.quick else ["--model-size", "smollm2", "--lengths", "fixed"]
    command = [sys.executable, str(BENCHMARKS_DIR / "speed.py"), *model, "--arms", *ARMS, "--skip-memory"]
    command += ["--batch-size", str(batch), "--max-new-tokens", str(length), "--repeats", str(args.repeats)]
    command += ["--warmup", "1", "--output-dir", str(output_dir)]
    return command if args.full else [*command, "--lora"]


def run_point(args: argparse.Namespace, length: int, batch: int) -> dict[str, Any]:
    """One point: ``speed.py`` in a fresh process; its results JSON."""
    with tempfile.TemporaryDirectory() as output_dir:
        command = point_command(args, length, batch, Path(output_dir))
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            sys.stderr.write(completed.stderr[-4000:])
            raise RuntimeError(f"point length={length} batch={batch} failed with exit code {completed.returncode}")
        (written,) = Path(output_dir).glob("*.json")  # speed.py names it after its configuration
        results = json.loads(written.read_text())
    print(f"[sweep] length {length}, batch {batch}: done", file=sys.stderr, flush=True)
    return {"length": length, "batch_size": batch, "timing": results["timing"], "environment": results["environment"]}


def point_row(point: dict[str, Any]) -> dict[str, float]:
    """The figures the table shows for one point."""
    timing = point["timing"]
    sgpo, base, rm = timing["sgpo_dpo"], timing["online_dpo"], timing["online_dpo_rm"]

    def median(arm: dict, component: str) -> float:
        return arm["summary"][component]["median"]

    return {
        "length": point["length"],
        "batch_size": point["batch_size"],
        "online_dpo_step_s": median(base, "step"),
        "online_dpo_rm_step_s": median(rm, "step"),
        "sgpo_dpo_step_s": median(sgpo, "step"),
        "vs_online_dpo": sgpo["paired_ratio_vs_online_dpo"]["median"],
        "vs_online_dpo_q1": sgpo["paired_ratio_vs_online_dpo"]["q1"],
        "vs_online_dpo_q3": sgpo["paired_ratio_vs_online_dpo"]["q3"],
        "vs_online_dpo_rm": sgpo["paired_ratio_vs_online_dpo_rm"]["median"],
        "vs_online_dpo_rm_q1": sgpo["paired_ratio_vs_online_dpo_rm"]["q1"],
        "vs_online_dpo_rm_q3": sgpo["paired_ratio_vs_online_dpo_rm"]["q3"],
        "generation_ratio": median(sgpo, "generation") / median(base, "generation"),
        "forward_backward_ratio": median(sgpo, "forward_backward") / median(base, "forward_backward"),
        "sgpo_generation_share": sgpo["fractions"]["generation"],
        "online_dpo_generation_share": base["fractions"]["generation"],
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Speed sweep: the SGPO DPO-phase step against OnlineDPO, by completion length and batch",
        "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}; {report['device']}",
        f"- model: {report['model']}; {report['tuning']}; every completion exactly the point's length; "
        f"{report['repeats']} interleaved timed steps per arm after 1 warm-up, per point",
        "- ratios: median of the per-repeat paired ratios (inter-quartile range in brackets); generation and "
        "forward/backward: SGPO's median time over OnlineDPO's (free reward); share: generation / whole step",
        "",
        "| completion tokens | prompts | OnlineDPO step (s) | +RM step (s) | SGPO step (s) | SGPO / OnlineDPO | "
        "SGPO / OnlineDPO+RM | generation ratio | forward/backward ratio | generation share SGPO / OnlineDPO |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["points"]:
        lines.append(
            f"| {row['length']} | {row['batch_size']} | {row['online_dpo_step_s']:.3g} | "
            f"{row['online_dpo_rm_step_s']:.3g} | {row['sgpo_dpo_step_s']:.3g} | {row['vs_online_dpo']:.2f}x "
            f"({row['vs_online_dpo_q1']:.2f}–{row['vs_online_dpo_q3']:.2f}) | {row['vs_online_dpo_rm']:.2f}x "
            f"({row['vs_online_dpo_rm_q1']:.2f}–{row['vs_online_dpo_rm_q3']:.2f}) | {row['generation_ratio']:.2f}x | "
            f"{row['forward_backward_ratio']:.2f}x | {100 * row['sgpo_generation_share']:.0f}% / "
            f"{100 * row['online_dpo_generation_share']:.0f}% |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    lengths = tuple(args.lengths or ((8, 16) if args.quick else DEFAULT_LENGTHS))
    batches = tuple(args.batch_sizes or ((2, 4) if args.quick else DEFAULT_BATCHES))
    grid = [(length, batch) for length in lengths for batch in batches]
    # The most expensive point first: with two workers the rest then fill the other one.
    grid.sort(key=lambda point: point[0] * point[1], reverse=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        points = list(pool.map(lambda point: run_point(args, *point), grid))
    points.sort(key=lambda point: (point["length"], point["batch_size"]))
    env = points[0]["environment"]
    model = env["model"]
    report = {
        "command": "python benchmarks/speed_sweep.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": started.isoformat(timespec="seconds"),
        "minutes": (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds() / 60,
        "device": f"{env['device']} ({env['device_name']}), {args.workers} point(s) at a time, 1 thread each",
        "model": "SmolLM2-135M-Instruct (its weights, tokenizer and chat template; the real task's prompts)"
        if model["size"] == "smollm2"
        else f"random Llama '{model['size']}' ({model['parameters'] / 1e6:.2f}M parameters)",
        "tuning": "full fine-tuning" if args.full else "LoRA r=8",
        "repeats": args.repeats,
        "points": [point_row(point) for point in points],
        "raw": points,
    }
    table = markdown(report)
    print(table)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "speed_sweep.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.output_dir / "speed_sweep.md").write_text(table)
    return report
