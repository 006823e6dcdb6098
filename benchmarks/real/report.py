"""The real-model benchmark's report: the plateau gate (continued SFT must not gain), the sensitivity gate (the
oracle must), the goal (SGPO against SFT and SPIN, and its share of the oracle's gain), the learning-rate grid with
the case no rate helps, and the markdown table with a few greedy answers."""

import math
import statistics

from benchmarks.protocol.gates import (
    beats_beyond_two_sigma,
    difference,
    rates_at_the_edge,
    sensitivity_gate_line,
    test_values,
)
from benchmarks.protocol.tables import cell, judged_cell, mean_diagnostics, mean_std, search_table
from benchmarks.real.arms import HEADLINE


GATE_POINTS = 8.0
PLATEAU_POINTS = 2.0  # continued SFT must gain less than this on validation: the start is at its SFT plateau
GOAL_POINTS = 3.0
ORACLE_SHARE = 0.4  # SGPO's gain must reach this share of the oracle's


def _mean(report: dict, arm: str, metric: str) -> float:
    values = test_values(report, arm, metric)
    return statistics.fmean(values) if values else math.nan


def _sigma(report: dict, arm: str, metric: str) -> float:
    values = test_values(report, arm, metric)
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0


def summarize(report: dict) -> dict:
    """The gate (the oracle's gain), the goal (SGPO against SFT and SPIN, and its share of the oracle's gain)."""
    start = 100 * report["start"][HEADLINE]
    held_out_start = 100 * report["start"][f"held_out_{HEADLINE}"]
    summary = {"start": start, "held_out_start": held_out_start}
    summary["oracle_gain"] = _mean(report, "online_dpo_oracle", HEADLINE) - start
    # The plateau gate: the best continued-SFT run of the learning-rate search against the start, on validation.
    sft_validation = [100 * r["validation"][HEADLINE] for r in report["search"] if r["arm"] == "sft"]
    start_validation = report["start"].get(f"validation_{HEADLINE}")
    summary["sft_plateau_gain"] = (
        max(sft_validation) - 100 * start_validation if sft_validation and start_validation is not None else math.nan
    )
    summary["sigma_oracle_gain"] = _sigma(report, "online_dpo_oracle", HEADLINE)
    summary["sgpo_gain"] = _mean(report, "sgpo", HEADLINE) - start
    summary["sigma_sgpo_gain"] = _sigma(report, "sgpo", HEADLINE)
    for other in ("sft", "spin"):
        value, sigma = difference(report, "sgpo", other, HEADLINE)
        summary[f"sgpo_minus_{other}"], summary[f"sigma_sgpo_minus_{other}"] = value, sigma
    oracle_gain = summary["oracle_gain"]
    summary["sgpo_share_of_oracle_gain"] = summary["sgpo_gain"] / oracle_gain if oracle_gain > 0 else math.nan
    summary["held_out"] = {
        arm: _mean(report, arm, f"held_out_{HEADLINE}") - held_out_start
        for arm in report["arms"]
        if test_values(report, arm, f"held_out_{HEADLINE}")
    }
    sgpo_runs = [r for r in report["final"] if r["arm"] == "sgpo" and "copied_share" in r["diagnostics"]]
    copied = [r["diagnostics"]["copied_share"] for r in sgpo_runs]
    summary["copy_share"] = statistics.fmean(copied) if copied else None
    # The control: what sharpening toward the policy's own greedy answer gains, with the same gate and no improver.
    value, sigma = difference(report, "sgpo", "self_sharpen", HEADLINE)
    summary["sgpo_minus_self_sharpening"], summary["sigma_sgpo_minus_self_sharpening"] = value, sigma
    # Of the SGPO default's kept pairs the checker tells apart, the share whose rewrite it rates better.
    judged = [(r["diagnostics"].get("rewrite_better"), r["diagnostics"].get("rewrite_worse")) for r in sgpo_runs]
    judged = [(better, worse) for better, worse in judged if better is not None and better + worse > 0]
    summary["pair_precision"] = statistics.fmean(b / (b + w) for b, w in judged) if judged else None
    summary["step1_only_gain"] = _mean(report, "sgpo_step1_only", HEADLINE) - start
    step1 = [r["diagnostics"] for r in report["final"] if r["arm"] == "sgpo" and "step1_seconds" in r["diagnostics"]]
    summary["step1_updates"] = step1[0]["step1_updates"] if step1 else None
    summary["step1_minutes"] = statistics.fmean(d["step1_seconds"] for d in step1) / 60 if step1 else None
    summary["sgpo_default"] = report.get("sgpo_default", {})
    return summary


def control_lines(summary: dict) -> list[str]:
    """The self-sharpening control, Step 1 alone, and the precision of SGPO's pairs, as the report states them."""
    lines = []
    control = summary.get("sgpo_minus_self_sharpening", math.nan)
    if math.isnan(control):
        lines.append("Control: not run (it needs the sgpo and self_sharpen arms).")
    else:
        verdict = "at or above" if control >= 0 else "BELOW"
        lines.append(
            f"Control: SGPO - self-sharpening = {control:+.1f} ± {summary['sigma_sgpo_minus_self_sharpening']:.1f} "
            f"points: SGPO is {verdict} the control (chosen = the policy's own greedy answer, the same gate, no "
            "improver); what lies above it is what the improver adds."
        )
    if summary.get("step1_updates") is not None:
        lines.append(
            f"Step 1: {summary['step1_updates']} updates of the improver ({summary['step1_minutes']:.0f} min per "
            f"seed, drafting included), alone {summary['step1_only_gain']:+.1f} points over the start "
            "(sgpo_step1_only); SGPO's gain beyond it is Step 2's."
        )
    if summary.get("pair_precision") is not None:
        lines.append(
            f"Pair precision: of the SGPO default's DPO pairs the checker tells apart, "
            f"{100 * summary['pair_precision']:.0f}% have the better side chosen (the checker is a diagnostic only)."
        )
    return lines


def gate_and_goal_lines(summary: dict) -> list[str]:
    """The gate and the goal as the report states them; "not run" where their arms are missing."""
    lines = []
    plateau = summary.get("sft_plateau_gain", math.nan)
    if math.isnan(plateau):
        lines.append("Plateau gate: not run (it needs the sft arm and the start's validation scores).")
    else:
        verdict = "PASS" if plateau < PLATEAU_POINTS else "FAIL: the start is not at its SFT plateau"
        lines.append(
            f"Plateau gate: continued SFT's best validation run gains {plateau:+.1f} points of sampled accuracy over "
            f"the start (needs < {PLATEAU_POINTS:g}): {verdict}."
        )
    gain = summary["oracle_gain"]
    lines.append(
        sensitivity_gate_line(
            gain,
            GATE_POINTS,
            "sampled accuracy",
            failure="the testbed cannot tell methods apart",
            not_run="it needs the online_dpo_oracle arm",
        )
    )
    beats = beats_beyond_two_sigma(summary, ("sft", "spin"), GOAL_POINTS)
    if beats is None:
        lines.append("Goal: not judged (it needs the sgpo, sft and spin arms).")
        return lines
    share = summary["sgpo_share_of_oracle_gain"]
    share_met = not math.isnan(share) and gain > 0 and share >= ORACLE_SHARE
    lines.append(
        f"Goal: SGPO - SFT = {summary['sgpo_minus_sft']:+.1f} ± {summary['sigma_sgpo_minus_sft']:.1f}, "
        f"SGPO - SPIN = {summary['sgpo_minus_spin']:+.1f} ± {summary['sigma_sgpo_minus_spin']:.1f} points (needs >= "
        f"{GOAL_POINTS:g} each, beyond 2 sigma), SGPO's gain {summary['sgpo_gain']:+.1f} = {100 * share:.0f}% of the "
        f"oracle's (needs >= {100 * ORACLE_SHARE:.0f}%): {'MET' if beats and share_met else 'NOT MET'}."
    )
    return lines


def grid_line(report: dict) -> str:
    """The protocol's grid rule (`benchmarks.protocol.gates.grid_line`), with one case told apart: a method chosen
    at the grid's smallest rate whose best validation run is no better than the start itself. No rate helps it; a
    smaller rate only comes closer to doing nothing, so extending the grid downwards cannot make an interior choice.
    That is said, not hidden."""
    grid = report["settings"]["learning_rates"]
    start = report["start"].get(f"validation_{HEADLINE}")
    best = {
        method: max(r["validation"][HEADLINE] for r in report["search"] if r["arm"] == method)
        for method in report["chosen_learning_rate"]
    }
    no_help = [
        method
        for method, rate in report["chosen_learning_rate"].items()
        if len(grid) >= 3 and rate == min(grid) and start is not None and best[method] <= start
    ]
    edge = [method for method in rates_at_the_edge(report) if method not in no_help]
    parts = []
    if edge:
        parts.append(f"NOT a choice for {', '.join(edge)} (chosen at the edge of the grid; extend it)")
    if no_help:
        parts.append(
            f"no rate helps {', '.join(no_help)} on validation (the best, at the smallest rate {min(grid):g}, is no "
            f"better than the start's {100 * start:.1f}%: "
            + ", ".join(f"{m} {100 * best[m]:.1f}%" for m in no_help)
            + "); a smaller rate only comes closer to the start"
        )
    return "Learning-rate grid: " + ("; ".join(parts) if parts else "every chosen rate lies inside it") + "."


def markdown_table(report: dict) -> str:
    settings, start, summary = report["settings"], report["start"], report["summary"]
    room, build = start["validation_headroom"], report["start_build"]
    zero = build["zero_shot_headroom"]["validation"]
    lines = [
        f"Command: `{report['command']}` ({report['date']}, {report['device']}, {report['total_seconds'] / 60:.0f} "
        f"min for this part). Start: SmolLM2-135M-Instruct after LoRA SFT on the task's {build['sft_set_size']} "
        f"SFT rows ({build['curve'][-1]['updates']} updates of {build['settings']['batch_size']}, cosine-decayed "
        f"learning rate, `python benchmarks/real_start.py`, {build['seconds'] / 60:.0f} min). "
        f"Every arm trains a fresh LoRA adapter on that SFT set for {settings['steps']} updates of "
        f"{settings['batch_size']} prompts (sampling temperature {settings['temperature']:g}); learning rate chosen "
        f"on validation from {tuple(settings['learning_rates'])}; {len(settings['seeds'])} seed(s); "
        f"{settings['test_prompts']} test prompts and {settings['held_out_prompts']} prompts of the held-out "
        "constraint family; mean ± standard deviation over seeds, in %.",
        "",
        f"Headroom (validation, {room['k']} samples): zero-shot greedy {100 * zero['greedy']:.1f}%, a sample "
        f"{100 * zero['sample']:.1f}%, pass@{zero['k']} {100 * zero['pass_at_k']:.1f}%; the start greedy "
        f"{100 * room['greedy']:.1f}%, a sample {100 * room['sample']:.1f}%, pass@{room['k']} "
        f"{100 * room['pass_at_k']:.1f}%, {100 * room['mixed']:.0f}% of prompts solved by some but not all samples.",
        "",
        *gate_and_goal_lines(summary),
        *control_lines(summary),
        grid_line(report),
        "",
        "The headline is the prompt-level accuracy of *sampled* answers (every constraint met and the request "
        f"answered; {settings['eval_samples']} samples per prompt at the training temperature). The rewrite "
        "columns judge SGPO's DPO pairs with the checker (better / worse than the draft), the trainer's "
        "`sgpo/rewrite_closer`, and the share of rewrite tokens copied from the draft.",
        "",
        "| arm | learning rate | test sampled | test greedy | held-out family sampled | held-out family greedy "
        "| rewrite better / worse | rewrite closer | copied from draft | seconds per run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| start | - | {100 * start['sampled_accuracy']:.1f} | {100 * start['greedy_accuracy']:.1f} "
        f"| {100 * start['held_out_sampled_accuracy']:.1f} | {100 * start['held_out_greedy_accuracy']:.1f} "
        "| - | - | - | - |",
    ]
    for arm in report["arms"]:
        runs = [r for r in report["final"] if r["arm"] == arm]
        if not runs:
            continue
        metrics = ("sampled_accuracy", "greedy_accuracy", "held_out_sampled_accuracy", "held_out_greedy_accuracy")
        cells = [mean_std(test_values(report, arm, metric)) for metric in metrics]
        keys = ("rewrite_better", "rewrite_worse", "sgpo/rewrite_closer", "copied_share", "tied_pairs")
        diagnostics = mean_diagnostics(runs, keys)
        judged = judged_cell(diagnostics)
        seconds = statistics.fmean(r["seconds"] for r in runs)
        lines.append(
            f"| {arm} | {runs[0]['learning_rate']:g} | {' | '.join(cells)} | {judged} "
            f"| {cell(diagnostics, 'sgpo/rewrite_closer')} | {cell(diagnostics, 'copied_share')} "
            f"| {seconds:.0f} |"
        )
    lines += [
        "",
        "The validation search (first seed; validation sampled / greedy accuracy, in %; the SGPO variants use "
        "SGPO's learning rate):",
        "",
        *search_table(report, "sampled_accuracy", "greedy_accuracy"),
    ]
    examples = [r for r in report["final"] if r["arm"] == "sgpo"][:1]
    if examples:
        lines += ["", "Greedy answers of the first SGPO run (test):", ""]
        lines += [f"- {prompt!r} -> {answer!r}" for prompt, answer in examples[0]["test"]["greedy_examples"]]
    return "\n".join(lines) + "\n"
