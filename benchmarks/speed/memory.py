"""Peak memory per arm, each measured in a fresh process (a peak is a high-water mark of a whole process): the
probe run there, and the subprocesses that run it."""

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import torch

from benchmarks.protocol.command import BENCHMARKS_DIR
from benchmarks.speed.builders import batches, build_model, build_trainer, import_trainers
from benchmarks.speed.data import build_dataset, build_tokenizer
from benchmarks.speed.instrumentation import StepProbe, run_step
from benchmarks.speed.settings import BASELINE, MEMORY_MODES, Settings


COMMAND = BENCHMARKS_DIR / "speed.py"  # run again with --memory-probe, in a fresh process per measurement


def current_rss_bytes() -> int:
    """Resident set size now (Linux: /proc; elsewhere the peak so far, the best that is available)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process.

    On Linux this is VmHWM, the high-water mark of this process image: `ru_maxrss` is not used there because
    after fork + exec it starts from the parent's RSS at the fork (the benchmark's parent holds three trainers).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def memory_probe(settings: Settings, arm: str, mode: str) -> dict[str, float]:
    """Peak memory of ``arm`` with ``mode`` ('full' or 'lora') fine-tuning, in this process (which must be fresh)."""
    import_trainers()  # imported before the baseline: module code is not what is measured
    tokenizer = build_tokenizer(settings)
    dataset = build_dataset(settings, tokenizer, num_rows=settings.batch_size * 2)
    model = build_model(settings, tokenizer)
    gc.collect()
    if settings.device == "cuda":
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        baseline = current_rss_bytes()
    with tempfile.TemporaryDirectory() as workdir:
        trainer = build_trainer(arm, settings, tokenizer, model, dataset, workdir, peft=mode == "lora")
        all_batches = batches(dataset, settings.batch_size)
        probe = StepProbe(settings.device)
        for step in range(1 + settings.memory_steps):  # the first step allocates the optimizer state
            run_step(trainer, all_batches[step % len(all_batches)], probe)
        if settings.device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = peak_rss_bytes()
    return {"baseline_bytes": baseline, "peak_bytes": peak, "delta_bytes": peak - baseline}


def forwarded_argv(args: argparse.Namespace) -> list[str]:
    """The settings a memory subprocess needs, as command-line flags."""
    argv = ["--device", args.device]
    for flag in ("model_size", "batch_size", "prompt_length", "max_new_tokens", "warmup"):
        value = getattr(args, flag)
        if value is not None:
            argv += [f"--{flag.replace('_', '-')}", str(value)]
    argv += ["--memory-steps", str(args.memory_steps), "--seed", str(args.seed), "--threads", str(args.threads)]
    argv += ["--improver-template", args.improver_template, "--tokenizer", args.tokenizer]
    if args.gradient_checkpointing:
        argv.append("--gradient-checkpointing")
    if args.lengths:
        argv += ["--lengths", args.lengths]
    if args.arms:
        argv += ["--arms", *args.arms]
    if args.quick:
        argv.append("--quick")
    return argv


def measure_memory(settings: Settings, argv: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """One fresh subprocess per (mode, arm): a peak is a high-water mark of a whole process. Two run at a time
    where there are two cores (a process's peak is its own, whatever runs beside it): half the wall time in CI."""

    def probe(mode: str, arm: str) -> dict[str, float]:
        command = [sys.executable, str(COMMAND), *argv, "--memory-probe", arm, mode]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            sys.stderr.write(completed.stderr)
            raise RuntimeError(f"memory probe {arm}/{mode} failed with exit code {completed.returncode}")
        entry = json.loads(completed.stdout.strip().splitlines()[-1])
        print(f"[memory] {mode} {arm}: +{entry['delta_bytes'] / 2**20:.1f} MiB", file=sys.stderr)
        return entry

    runs = [(mode, arm) for mode in MEMORY_MODES for arm in settings.arms]
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        entries = list(pool.map(lambda run: probe(*run), runs))
    memory: dict[str, dict[str, dict[str, float]]] = {mode: {} for mode in MEMORY_MODES}
    for (mode, arm), entry in zip(runs, entries):
        memory[mode][arm] = entry
    for mode in MEMORY_MODES:
        base = memory[mode][BASELINE]
        for arm in settings.arms:
            entry = memory[mode][arm]
            entry["ratio_vs_online_dpo"] = entry["delta_bytes"] / base["delta_bytes"]
            entry["peak_ratio_vs_online_dpo"] = entry["peak_bytes"] / base["peak_bytes"]
    return memory
