"""The pair-precision probe: which reward-free options give DPO pairs whose chosen side is really better, before any
preference step is trained.

    python benchmarks/pair_probe.py            # writes benchmarks/results/pair_probe.{md,json}
    python benchmarks/pair_probe.py --quick    # a few prompts on CI's stand-in start

For each Step 1 target (benchmarks/real/step1.py: one pass over the start's drafts of 384 training prompts), on 128
*other* training prompts: two sampled drafts per prompt from the Step-1 model's policy role (as in the SGPO arms'
Step 2) at the benchmark's temperature, the Step-1 improver's greedy and sampled rewrite of each, and every pair
gate's statistic, computed by the library's own stages (`DraftStage`, `Rewriter`, `trl_sgpo.step.pair_gates`) with
the Step-1 model as the DPO reference (as in Step 2). The control: the start's greedy answer against each of its
samples (`self_sharpen`'s pairs), gated by the start's reference margin. The checker scores both sides of every pair:
a diagnostic only, nothing in training reads it. An option's precision is the share of its kept pairs the checker
tells apart (informative) whose chosen side it rates better.
"""

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, replace
from datetime import date
from pathlib import Path

import torch

from benchmarks.real.arms import task_score
from benchmarks.real.start import real_start_dir
from benchmarks.real.step1 import QUICK_STEP1, Step1Settings, real_step1_dir
from benchmarks.real.task import conversational, make_splits


RESULTS = Path(__file__).resolve().parents[1] / "results"
TARGETS = ("reference", "keep_plausible")
GATES = ("none", "reference_margin", "improver_keep", "round_trip")


@dataclass(frozen=True)
class ProbeSettings:
    prompts: int = 128
    drafts_per_prompt: int = 2
    batch_size: int = 16
    temperature: float = 1.0
    max_new_tokens: int = 24
    seed: int = 0


QUICK_PROBE = ProbeSettings(prompts=4, batch_size=4, max_new_tokens=8)


def probe_rows(settings: ProbeSettings, step1: Step1Settings) -> list[dict]:
    """The probe's prompts: training rows after Step 1's in the same shuffle (never seen by Step 1)."""
    from datasets import Dataset

    rows = Dataset.from_list(conversational(make_splits()["train"])).shuffle(seed=step1.seed)
    return rows.select(range(step1.rows, step1.rows + settings.prompts))


def _load(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def _trainer(model, tokenizer, settings: ProbeSettings, improver_temperature: float, rows):
    """An SGPO trainer around ``model`` (not trained here): its stages draft, rewrite and gate; its reference model
    is a frozen copy of ``model``."""
    import tempfile

    from trl_sgpo import SGPOConfig, SGPOTrainer

    config = SGPOConfig(
        output_dir=tempfile.mkdtemp(),
        improver_format="next_turn",
        improver_warmup_steps=0,
        improver_temperature=improver_temperature,
        temperature=settings.temperature,
        max_new_tokens=settings.max_new_tokens,
        per_device_train_batch_size=settings.batch_size,
        max_length=384,
        report_to="none",
        use_cpu=True,
    )
    return SGPOTrainer(model=model, args=config, train_dataset=rows, processing_class=tokenizer)


def _chunks(rows, size: int):
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _pair_records(trainer, sampled_trainer, rows, settings: ProbeSettings) -> list[dict]:
    """Every (prompt, draft) of the probe: the checker's scores of the draft and of both rewrites, and each gate's
    statistic for each rewrite."""
    from trl_sgpo.step.pair_gates import improver_keep_margins, margins, round_trip_stable

    model, decode = trainer.model, trainer.processing_class.decode
    records = []
    for draft_round in range(settings.drafts_per_prompt):
        for chunk in _chunks(rows, settings.batch_size):
            torch.manual_seed(settings.seed * 1000 + draft_round * 100 + len(records))
            with torch.no_grad():
                batch = trainer.draft(model, chunk)
                row = [{"task": task, "draft": decode(d.token_ids, skip_special_tokens=True), "draft_ended": d.ended}
                       for task, d in zip(chunk["task"], batch.drafts)]  # fmt: skip
                for name, stage in (("greedy", trainer.rewrite), ("sampled", sampled_trainer.rewrite)):
                    rewrites = stage(model, batch)
                    pair = trainer.layout.pad(rewrites.completions + batch.drafts)
                    reference = margins(trainer._reference_logps(batch, pair), pair.mask)
                    keep = improver_keep_margins(trainer.scorer, model, rewrites.prompts, pair)
                    stable = round_trip_stable(trainer.rewrite, model, batch, rewrites.completions)
                    for entry, draft, rewrite, ref_margin, keep_margin, same in zip(
                        row, batch.drafts, rewrites.completions, reference, keep, stable
                    ):
                        entry[name] = {
                            "text": decode(rewrite.token_ids, skip_special_tokens=True),
                            "identical": rewrite.token_ids == draft.token_ids,
                            "ended": rewrite.ended,
                            "reference_margin": ref_margin,
                            "improver_keep": keep_margin,
                            "round_trip": same,
                        }
            records.extend(row)
    for entry in records:
        entry["draft_score"] = task_score(entry["draft"], entry["task"])
        for name in ("greedy", "sampled"):
            entry[name]["score"] = task_score(entry[name]["text"], entry["task"])
    return records


def _control_records(trainer, rows, settings: ProbeSettings) -> list[dict]:
    """The self-sharpening control's pairs on the start: its greedy answer against each sampled draft."""
    from trl_sgpo.step.pair_gates import margins

    model, decode = trainer.model, trainer.processing_class.decode
    records = []
    for draft_round in range(settings.drafts_per_prompt):
        for chunk in _chunks(rows, settings.batch_size):
            torch.manual_seed(settings.seed * 1000 + draft_round * 100 + len(records))
            with torch.no_grad():
                batch = trainer.draft(model, chunk)
                greedy = trainer.sampler(model, batch.prompt_ids, batch.prompt_mask, "eval")
                pair = trainer.layout.pad(greedy + batch.drafts)
                reference = margins(trainer._reference_logps(batch, pair), pair.mask)
            for task, draft, answer, margin in zip(chunk["task"], batch.drafts, greedy, reference):
                draft_text, answer_text = (decode(c.token_ids, skip_special_tokens=True) for c in (draft, answer))
                records.append(
                    {
                        "draft_score": task_score(draft_text, task),
                        "draft_ended": draft.ended,
                        "greedy": {
                            "text": answer_text,
                            "identical": answer.token_ids == draft.token_ids,
                            "ended": answer.ended,
                            "reference_margin": margin,
                            "score": task_score(answer_text, task),
                        },
                    }
                )
    return records


def precision_row(records: list[dict], rewrite: str, gate: str) -> dict:
    """The option's pairs: kept (the filter's rules, then the gate), informative, better, worse, precision."""
    kept = []
    for entry in records:
        chosen = entry[rewrite]
        if chosen["identical"] or not (chosen["ended"] and entry["draft_ended"]) or not chosen["text"]:
            continue
        if gate == "reference_margin" and not chosen["reference_margin"] > 0:
            continue
        if gate == "improver_keep" and not chosen["improver_keep"] > 0:
            continue
        if gate == "round_trip" and not chosen["round_trip"]:
            continue
        kept.append(entry)
    better = sum(e[rewrite]["score"] > e["draft_score"] for e in kept)
    worse = sum(e[rewrite]["score"] < e["draft_score"] for e in kept)
    right = [float(e["draft_score"] == 1.0) for e in records], [float(e[rewrite]["score"] == 1.0) for e in records]
    return {
        "pairs": len(records),
        "kept": len(kept),
        "informative": better + worse,
        "better": better,
        "worse": worse,
        "precision": better / (better + worse) if better + worse else float("nan"),
        "identical": sum(e[rewrite]["identical"] for e in records) / len(records),
        "right_draft": statistics.fmean(right[0]),
        "right_chosen": statistics.fmean(right[1]),
    }


def run_probe(settings: ProbeSettings, quick: bool = False) -> dict:
    started = time.perf_counter()
    base_step1 = QUICK_STEP1 if quick else Step1Settings(seed=settings.seed)
    rows = probe_rows(settings, base_step1)
    start = real_start_dir(quick)
    report = {"options": [], "step1": {}}
    for target in TARGETS:
        folder = real_step1_dir(replace(base_step1, target=target), quick)
        report["step1"][target] = {
            key: value for key, value in json.loads((folder / "build.json").read_text()).items() if key != "logs"
        }
        model, tokenizer = _load(folder)
        greedy_trainer = _trainer(model, tokenizer, settings, 0.0, rows)
        sampled_trainer = _trainer(model, tokenizer, settings, settings.temperature, rows)
        records = _pair_records(greedy_trainer, sampled_trainer, rows, settings)
        for rewrite in ("sampled", "greedy"):
            for gate in GATES:
                row = precision_row(records, rewrite, gate)
                report["options"].append({"source": "sgpo", "target": target, "rewrite": rewrite, "gate": gate, **row})
        report.setdefault("examples", {})[target] = records[:6]
    control = _control_records(_trainer(*_load(start), settings, 0.0, rows), rows, settings)
    for gate in ("none", "reference_margin"):
        row = precision_row(control, "greedy", gate)
        report["options"].append({"source": "self_sharpen", "target": "-", "rewrite": "greedy", "gate": gate, **row})
    report.update(
        command="python benchmarks/pair_probe.py" + (" --quick" if quick else ""),
        date=date.today().isoformat(),
        machine=f"{platform.machine()} CPU, {torch.get_num_threads()} thread(s)",
        settings=asdict(settings),
        seconds=time.perf_counter() - started,
    )
    return report


def markdown(report: dict) -> str:
    settings, step1 = report["settings"], report["step1"]
    updates = ", ".join(f"{t}: {s['updates']} updates in {s['seconds'] / 60:.0f} min" for t, s in step1.items())
    lines = [
        f"Command: `{report['command']}` ({report['date']}, {report['machine']}, {report['seconds'] / 60:.0f} min). "
        f"{settings['prompts']} training prompts unseen by Step 1, {settings['drafts_per_prompt']} sampled drafts "
        f"each (temperature {settings['temperature']:g}); Step 1 ({updates}). Precision: of the kept pairs the "
        "checker tells apart, the share whose chosen side it rates better (the checker is a diagnostic only).",
        "",
        "| chosen side | Step 1 target | rewrite | gate | kept | informative | better | worse | precision | identical "
        "| right: draft -> chosen |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in report["options"]:
        kept = f"{o['kept']} / {o['pairs']}"
        lines.append(
            f"| {o['source']} | {o['target']} | {o['rewrite']} | {o['gate']} | {kept} | {o['informative']} | "
            f"{o['better']} | {o['worse']} | {100 * o['precision']:.0f}% | {100 * o['identical']:.0f}% | "
            f"{100 * o['right_draft']:.0f} -> {100 * o['right_chosen']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few prompts on CI's stand-in start")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    settings = replace(QUICK_PROBE if args.quick else ProbeSettings(), seed=args.seed)
    report = run_probe(settings, quick=args.quick)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    name = "pair_probe_quick" if args.quick else "pair_probe"
    (args.output_dir / f"{name}.json").write_text(json.dumps(report, indent=1))
    (args.output_dir / f"{name}.md").write_text(markdown(report))
    print(markdown(report))
