"""One configuration's report: its goals (met or MISSED, never adjusted), the environment it ran in, and the
markdown tables of time, work and memory per arm."""

import datetime
import os
import platform
import shlex
import sys
from collections import defaultdict
from dataclasses import asdict
from typing import Any

import torch

from benchmarks.speed.builders import build_model, max_length
from benchmarks.speed.data import tokens_per_row
from benchmarks.speed.settings import Settings, improver_template


GOALS = (
    # (name, what, target): the goals of issue 10, as ratios from one run; a timing goal is met when the upper
    # quartile of its paired per-repeat ratio is within the target (so that machine noise cannot flip it)
    ("dpo_step_ratio_rm", "SGPO DPO-phase step / OnlineDPO step with a reward model", 1.0),
    ("dpo_step_ratio", "SGPO DPO-phase step / OnlineDPO step with the free reward", 1.3),
    ("improver_step_ratio", "SGPO improver-phase step / OnlineDPO step with the free reward", 0.7),
    ("lora_peak_ratio_dpo", "LoRA peak memory (above the model), SGPO DPO phase / OnlineDPO free reward", 1.3),
    (
        "lora_peak_ratio_improver",
        "LoRA peak memory (above the model), SGPO improver phase / OnlineDPO free reward",
        1.3,
    ),
)


def check_goals(timing: dict[str, Any], memory: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each goal's value, and whether it is met: a timing goal by the upper quartile of its paired per-repeat
    ratios (``upper``), a memory goal (one measurement per arm) by its value."""
    values: dict[str, tuple[float, float, float]] = {}  # name -> (value, lower quartile, upper quartile)
    for name, arm, baseline in (
        ("dpo_step_ratio_rm", "sgpo_dpo", "online_dpo_rm"),
        ("dpo_step_ratio", "sgpo_dpo", "online_dpo"),
        ("improver_step_ratio", "sgpo_improver", "online_dpo"),
    ):
        if arm in timing:
            paired = timing[arm][f"paired_ratio_vs_{baseline}"]
            values[name] = (paired["median"], paired["q1"], paired["q3"])
    if memory is not None:
        for name, arm in (("lora_peak_ratio_dpo", "sgpo_dpo"), ("lora_peak_ratio_improver", "sgpo_improver")):
            if arm in memory["lora"]:
                ratio = memory["lora"][arm]["ratio_vs_online_dpo"]
                values[name] = (ratio, ratio, ratio)
    return [goal_entry(name, what, target, *values[name]) for name, what, target in GOALS if name in values]


def goal_entry(name: str, what: str, target: float, value: float, lower: float, upper: float) -> dict[str, Any]:
    """A goal as the reports record it: met when its upper quartile ``upper`` is within ``target``."""
    return {
        "name": name,
        "what": what,
        "target": target,
        "value": value,
        "lower": lower,
        "upper": upper,
        "met": upper <= target,
    }


def goal_cells(goal: dict[str, Any]) -> str:
    """A goal's target, value (and its paired IQR, where it has one) and verdict, as cells of a table row."""
    spread = f" ({goal['lower']:.2f}–{goal['upper']:.2f})" if goal["upper"] != goal["value"] else ""
    return f"<= {goal['target']:.2f}x | {goal['value']:.2f}x{spread} | {'met' if goal['met'] else 'MISSED'} |"


def environment(settings: Settings, tokenizer) -> dict[str, Any]:
    import accelerate
    import peft
    import transformers
    import trl

    if settings.device == "cuda":
        device_name = torch.cuda.get_device_name()
    else:
        device_name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as cpuinfo:
                device_name = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    model = build_model(settings, tokenizer, meta=True)
    hidden, layers, heads = model.config.hidden_size, model.config.num_hidden_layers, model.config.num_attention_heads
    template_tokens = len(tokenizer(improver_template(settings), add_special_tokens=False)["input_ids"])
    return {
        "command": command_line(),
        "tokenizer": {"kind": "smollm2" if settings.real_model else settings.tokenizer, "vocab_size": len(tokenizer)},
        "tokens_per_row": tokens_per_row(settings, tokenizer),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": settings.device,
        "device_name": device_name,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "model": {
            "size": settings.model_size,
            "hidden_size": hidden,
            "num_layers": layers,
            "num_heads": heads,
            "parameters": sum(p.numel() for p in model.parameters()),
            "dtype": str(settings.dtype).removeprefix("torch."),
        },
        "improver_template_tokens": template_tokens,
        "max_length": max_length(settings, tokenizer),
        "settings": asdict(settings),
    }


def command_line() -> str:
    """The command line as run, with the `taskset -c` it ran under when the process was pinned to fewer cores."""
    words = ["python", *sys.argv]
    if hasattr(os, "sched_getaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < (os.cpu_count() or len(cores)):
            words = ["taskset", "-c", ",".join(map(str, cores)), *words]
    return shlex.join(words)


def fmt_seconds(summary: dict[str, float]) -> str:
    return f"{summary['median'] * 1000:.1f} ± {summary['iqr'] * 500:.1f}"


def per_second(arm_timing: dict[str, Any], work: str, component: str) -> str:
    """Median tokens of ``work`` per second of the median ``component`` time (generation, or the whole step)."""
    seconds = arm_timing["summary"][component]["median"]
    return f"{arm_timing['work'].get(work, 0.0) / seconds:.0f}" if seconds > 0 else "n/a"


def markdown_report(results: dict[str, Any]) -> str:
    env, timing, memory, goals = results["environment"], results["timing"], results["memory"], results["goals"]
    s = env["settings"]
    model = env["model"]
    rows = env["tokens_per_row"]
    arms = list(timing)
    kind = env["tokenizer"]["kind"]
    tokenizer = {
        "bpe": f"byte-level BPE trained offline on seeded pseudo-English ({env['tokenizer']['vocab_size']} tokens)",
        "char": f"character-level tokenizer ({env['tokenizer']['vocab_size']} tokens)",
        "smollm2": f"its own tokenizer ({env['tokenizer']['vocab_size']} tokens) and chat template",
    }[kind]
    if kind == "smollm2":
        model_line = (
            f"- model: SmolLM2-135M-Instruct, its own weights ({model['parameters'] / 1e6:.1f}M parameters, "
            f"{model['dtype']}); {tokenizer}; the real task's prompts (benchmarks/real/task.py)"
        )
    else:
        model_line = (
            f"- model: random Llama '{model['size']}' (hidden {model['hidden_size']}, {model['num_layers']} layers, "
            f"{model['num_heads']} heads, {model['parameters'] / 1e6:.2f}M parameters, {model['dtype']}); {tokenizer}"
        )
    lengths = (
        f"every completion exactly {s['max_new_tokens']} tokens"
        if s.get("lengths", "fixed") == "fixed"
        else f"completions as sampled, ending at EOS, at most {s['max_new_tokens']} tokens (same prompts and seeds)"
    )
    lines = [
        "# Speed: SGPO steps vs TRL's OnlineDPOTrainer step",
        "",
        f"- command: `{env['command']}`",
        f"- date: {env['date']}",
        f"- device: {env['device']} ({env['device_name']}), torch threads: {env['torch_threads']}",
        f"- versions: python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"trl {env['trl']}, peft {env['peft']}, accelerate {env['accelerate']}",
        model_line,
        f"- batch: {s['batch_size']} prompts; {lengths} (OnlineDPO: 2 per "
        "prompt; SGPO: 1 draft + 1 rewrite in the DPO phase); "
        f"max_length {env['max_length']}; gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}; "
        f"timed with {'LoRA (r=8)' if s.get('lora') else 'full fine-tuning'}",
        f"- arms: `online_dpo` scores with a free reward (string length); `online_dpo_rm` with a reward model of the "
        f"policy's size (LlamaForSequenceClassification, same config); `sgpo_*` use improver_format='next_turn' "
        f"(default instruction), `sgpo_*_template` improver_format='template' (template '{s['improver_template']}')",
        f"- repeats: {s['repeats']} interleaved steps per arm after {s['warmup']} warm-up steps; one step = "
        "`training_step` + clipping + `optimizer.step` + `zero_grad`",
        "",
        "## Tokens per row",
        "",
        "| prompt | completion | next turn adds (instruction turn and markup) | of which the instruction | "
        "template format adds (template and markup) |",
        "|---|---|---|---|---|",
        f"| {rows['prompt']} | {rows['completion']} | {rows['next_turn_overhead']} | {rows['instruction']} | "
        f"{rows['template_overhead']} |",
        "",
        "## Time per optimizer step (ms, median ± half IQR)",
        "",
        "| arm | step | vs online_dpo (paired IQR) | vs online_dpo_rm (paired IQR) | generation | forward/backward "
        "| reward | optimizer | rest | rest % | generated tokens/s | trained tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        t = timing[arm]
        summary, paired, paired_rm = t["summary"], t["paired_ratio_vs_online_dpo"], t["paired_ratio_vs_online_dpo_rm"]
        lines.append(
            f"| {arm} | {fmt_seconds(summary['step'])} | {t['ratio_vs_online_dpo']:.2f}x "
            f"({paired['q1']:.2f}–{paired['q3']:.2f}) | {t['ratio_vs_online_dpo_rm']:.2f}x "
            f"({paired_rm['q1']:.2f}–{paired_rm['q3']:.2f}) | {fmt_seconds(summary['generation'])} | "
            f"{fmt_seconds(summary['forward_backward'])} | {fmt_seconds(summary['reward'])} | "
            f"{fmt_seconds(summary['optimizer'])} | {fmt_seconds(summary['rest'])} | "
            f"{100 * t['fractions']['rest']:.1f}% | {per_second(t, 'generated_tokens', 'generation')} | "
            f"{per_second(t, 'forward_tokens_grad', 'step')} |"
        )
    lines += [
        "",
        "## Work per step (median)",
        "",
        "| arm | generate calls | rows generated | prompt tokens fed to generate | prompt tokens read from the "
        "draft's cache | tokens generated | forward tokens with grad (padding) | forward tokens without grad "
        "(padding) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        w = defaultdict(float, timing[arm]["work"])
        lines.append(
            f"| {arm} | {w['generate_calls']:.0f} | {w['generated_rows']:.0f} | {w['generation_prompt_tokens']:.0f} | "
            f"{w['generation_cached_tokens']:.0f} | {w['generated_tokens']:.0f} | {w['forward_tokens_grad']:.0f} "
            f"({w['forward_padding_tokens_grad']:.0f}) | {w['forward_tokens_no_grad']:.0f} "
            f"({w['forward_padding_tokens_no_grad']:.0f}) |"
        )
    lines.append("")
    lines.append(
        "The reward model's forward pass (`online_dpo_rm`) runs inside upstream's reward function and is counted in "
        "the reward column, not in the forward-token columns."
    )
    if memory is not None:
        unit = "allocated CUDA memory" if env["device"] == "cuda" else "RSS"
        lines += [
            "",
            f"## Peak memory ({unit}, MiB above the model alone; absolute peak in brackets; ratios vs online_dpo)",
            "",
            "| arm | full fine-tuning | ratio | LoRA r=8 | ratio |",
            "|---|---|---|---|---|",
        ]
        for arm in arms:
            full, lora = memory["full"][arm], memory["lora"][arm]
            lines.append(
                f"| {arm} | {full['delta_bytes'] / 2**20:.1f} [{full['peak_bytes'] / 2**20:.0f}] | "
                f"{full['ratio_vs_online_dpo']:.2f}x | {lora['delta_bytes'] / 2**20:.1f} "
                f"[{lora['peak_bytes'] / 2**20:.0f}] | {lora['ratio_vs_online_dpo']:.2f}x |"
            )
    lines += [
        "",
        "## Goals",
        "",
        "A timing goal is met when the upper quartile of its paired per-repeat ratio is within the target.",
        "",
        "| goal | target | value (paired IQR) | |",
        "|---|---|---|---|",
    ]
    lines += [f"| {goal['what']} | {goal_cells(goal)}" for goal in goals]
    return "\n".join(lines) + "\n"
