"""The toy quality benchmark's report: the headline numbers (the oracle's gain, SGPO against SPIN and continued SFT),
the gate and the goal as the report states them, and the markdown table."""

import math
import statistics

from benchmarks.protocol.gates import (
    beats_beyond_two_sigma,
    difference,
    grid_line,
    sensitivity_gate_line,
    test_values,
)
from benchmarks.protocol.tables import cell, judged_cell, mean_diagnostics, mean_std, search_table
from benchmarks.toy.arms import HEADLINE


GATE_POINTS = 8.0  # the oracle must beat the start by this many test points of the headline metric
GOAL_POINTS = 5.0  # SGPO's goal over SPIN and over continued SFT, in test points of the headline, beyond 2 sigma


def summarize(report: dict) -> dict:
    """The headline numbers: the oracle's gain (the gate), and SGPO against SPIN and continued SFT (the goal)."""
    start = 100 * report["start"][HEADLINE]
    oracle = test_values(report, "online_dpo_oracle", HEADLINE)
    sgpo_minus_spin, sigma_spin = difference(report, "sgpo", "spin", HEADLINE)
    sgpo_minus_sft, sigma_sft = difference(report, "sgpo", "sft", HEADLINE)
    return {
        "start": start,
        "oracle_gain": statistics.fmean(oracle) - start if oracle else math.nan,
        "sgpo_minus_spin": sgpo_minus_spin,
        "sigma_sgpo_minus_spin": sigma_spin,
        "sgpo_minus_sft": sgpo_minus_sft,
        "sigma_sgpo_minus_sft": sigma_sft,
        "sgpo_default": report.get("sgpo_default", {}),
    }


def gate_and_goal_lines(summary: dict) -> list[str]:
    """The gate and the goal as the report states them; "not run" where their arms were left out of ``--arms``."""
    gate_line = sensitivity_gate_line(
        summary["oracle_gain"],
        GATE_POINTS,
        "sampled exact match",
        failure="the testbed cannot tell methods apart; change the world",
        not_run="it needs the online_dpo_oracle arm, which --arms left out",
    )
    goal_met = beats_beyond_two_sigma(summary, ("spin", "sft"), GOAL_POINTS)
    if goal_met is None:
        return [gate_line, "Goal: not judged (it needs the sgpo, spin and sft arms, which --arms left out)."]
    return [
        gate_line,
        f"Goal: SGPO - SPIN = {summary['sgpo_minus_spin']:+.1f} ± {summary['sigma_sgpo_minus_spin']:.1f} and "
        f"SGPO - SFT = {summary['sgpo_minus_sft']:+.1f} ± {summary['sigma_sgpo_minus_sft']:.1f} points "
        f"(needs >= {GOAL_POINTS:g} each, beyond 2 sigma): {'MET' if goal_met else 'NOT MET'}.",
    ]


def markdown_table(report: dict) -> str:
    settings, start = report["settings"], report["start"]
    headroom = start["validation_headroom"]
    lines = [
        f"Command: `{report['command']}` ({report['date']}, {report['device']}, {report['total_seconds'] / 60:.0f} "
        f"min). Start: the shipped checkpoint, SFT to its validation plateau on {report['sft_set_size']} prompts of "
        f"the `{report['regime']}` regime; every arm trains on that SFT set for {settings['steps']} updates of "
        f"{settings['batch_size']} prompts (sampling temperature {settings['temperature']:g}). Learning rate chosen "
        f"on validation from {tuple(settings['learning_rates'])}; {len(settings['seeds'])} seed(s); "
        f"{settings['test_prompts']} held-out test prompts; mean ± standard deviation over seeds, in %.",
        "",
        f"Headroom of the start (validation): greedy exact match {100 * headroom['greedy']:.1f}%, a sample "
        f"{100 * headroom['sample']:.1f}%, pass@{headroom['k']} {100 * headroom['pass_at_k']:.1f}%; "
        f"{100 * headroom['mixed']:.0f}% of prompts are solved by some but not all of {headroom['k']} samples.",
        "",
        *gate_and_goal_lines(report["summary"]),
        grid_line(report),
        "",
        "The headline is *sampled* exact match: the exact match of answers sampled at the training temperature "
        f"({settings['eval_samples']} per prompt, i.e. pass@1), the distribution on-policy methods train. Greedy "
        "exact match and partial credit are of greedy answers. The oracle's tied pairs are the share of its pairs "
        "whose two samples the checker scored the same.",
        "",
        "| arm | learning rate | test sampled exact match | test greedy exact match | test greedy partial credit "
        "| rewrite better / worse (checker) | rewrite closer to reference | seconds per run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| start (shipped checkpoint) | - | {100 * start['sampled_exact_match']:.1f} "
        f"| {100 * start['exact_match']:.1f} | {100 * start['partial_credit']:.1f} | - | - | - |",
    ]
    for arm in report["arms"]:
        runs = [r for r in report["final"] if r["arm"] == arm]
        if not runs:
            continue
        exact = mean_std(test_values(report, arm, "exact_match"))
        partial = mean_std(test_values(report, arm, "partial_credit"))
        sampled = mean_std(test_values(report, arm, "sampled_exact_match"))
        keys = ("rewrite_better", "rewrite_worse", "sgpo/rewrite_closer", "tied_pairs")
        diagnostics = mean_diagnostics(runs, keys)
        seconds = statistics.fmean(r["seconds"] for r in runs)
        lines.append(
            f"| {arm} | {runs[0]['learning_rate']:g} | {sampled} | {exact} | {partial} | {judged_cell(diagnostics)} | "
            f"{cell(diagnostics, 'sgpo/rewrite_closer')} | {seconds:.0f} |"
        )
    lines += [
        "",
        "The validation search (first seed; validation sampled / greedy exact match, in %; the best sampled exact "
        "match was kept, ties going to the first value; the SGPO ablations use SGPO's learning rate):",
        "",
        *search_table(report, "sampled_exact_match", "exact_match"),
    ]
    return "\n".join(lines) + "\n"
