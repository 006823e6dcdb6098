"""The cells and tables both quality benchmarks' reports share: mean ± standard deviation over seeds, the diagnostics
of an arm's runs, the pair-verdict cell, and the learning-rate search as a table."""

import statistics


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ± {spread:.1f}"


def cell(diagnostics: dict, key: str, digits: int = 2) -> str:
    return f"{diagnostics[key]:.{digits}f}" if key in diagnostics else "-"


def mean_diagnostics(runs: list[dict], keys: tuple[str, ...]) -> dict[str, float]:
    """The mean over ``runs`` of each of ``keys`` that every run's diagnostics hold."""
    return {
        key: statistics.fmean(r["diagnostics"][key] for r in runs)
        for key in keys
        if all(key in r["diagnostics"] for r in runs)
    }


def judged_cell(diagnostics: dict) -> str:
    """The pair-verdict cell: rewrites better / worse than their drafts, or the oracle's share of tied pairs."""
    if "rewrite_better" in diagnostics:
        return f"{cell(diagnostics, 'rewrite_better')} / {cell(diagnostics, 'rewrite_worse')}"
    if "tied_pairs" in diagnostics:
        return f"(tied pairs {cell(diagnostics, 'tied_pairs')})"
    return "-"


def search_table(report: dict, sampled: str, greedy: str) -> list[str]:
    """The validation search as table rows: each method's sampled / greedy score at each learning rate."""
    grid = report["settings"]["learning_rates"]
    lines = [
        "| method | " + " | ".join(f"lr {lr:g}" for lr in grid) + " |",
        "| --- | " + " | ".join("---" for _ in grid) + " |",
    ]
    for method in report["chosen_learning_rate"]:
        cells = []
        for lr in grid:
            runs = [r for r in report["search"] if (r["arm"], r["learning_rate"]) == (method, lr)]
            scores = runs[0]["validation"] if runs else {}
            cells.append(f"{100 * scores[sampled]:.1f} / {100 * scores[greedy]:.1f}" if scores else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines
