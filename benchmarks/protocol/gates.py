"""What a quality benchmark's report judges: differences of test scores with their sigma over seeds, the sensitivity
gate (the oracle must beat the start), the goal (SGPO beyond 2 sigma over its baselines), and whether each chosen
learning rate lies inside the grid."""

import math
import statistics


def test_values(report: dict, arm: str, metric: str) -> list[float]:
    """The test scores of ``arm``'s final runs (one per seed), in points."""
    return [100 * r["test"][metric] for r in report["final"] if r["arm"] == arm]


def difference(report: dict, arm: str, other: str, metric: str) -> tuple[float, float]:
    """Mean difference of a test metric (points) and its sigma: sqrt(sd_a^2/n_a + sd_b^2/n_b) over seeds."""
    a, b = test_values(report, arm, metric), test_values(report, other, metric)
    if not a or not b:
        return math.nan, math.nan
    variance = sum(statistics.variance(v) / len(v) if len(v) > 1 else 0.0 for v in (a, b))
    return statistics.fmean(a) - statistics.fmean(b), math.sqrt(variance)


def sensitivity_gate_line(gain: float, needs: float, metric: str, failure: str, not_run: str) -> str:
    """The sensitivity gate as the report states it: the oracle's test gain over the start must reach ``needs``
    points of ``metric``; "not run" (for the reason ``not_run``) where the oracle arm was left out."""
    if math.isnan(gain):
        return f"Sensitivity gate: not run ({not_run})."
    verdict = "PASS" if gain >= needs else f"FAIL: {failure}"
    return (
        f"Sensitivity gate: the oracle arm gains {gain:+.1f} points of test {metric} over the start "
        f"(needs >= {needs:g}): {verdict}."
    )


def beats_beyond_two_sigma(summary: dict, others: tuple[str, ...], points: float) -> bool | None:
    """SGPO's goal against each of ``others``: at least ``points`` test points more, and more than 2 sigma; None
    where it cannot be judged (an arm was not run)."""
    if any(math.isnan(summary[f"sgpo_minus_{other}"]) for other in others):
        return None
    return all(
        summary[f"sgpo_minus_{other}"] >= points
        and summary[f"sgpo_minus_{other}"] > 2 * summary[f"sigma_sgpo_minus_{other}"]
        for other in others
    )


def rates_at_the_edge(report: dict) -> list[str]:
    """The methods whose chosen learning rate is the smallest or largest of the grid: not a choice, a bound."""
    grid = report["settings"]["learning_rates"]
    if len(grid) < 3:  # a one- or two-value grid (``--quick``) has no inside: every rate is at its edge
        return list(report["chosen_learning_rate"])
    return [method for method, rate in report["chosen_learning_rate"].items() if rate in (min(grid), max(grid))]


def grid_line(report: dict) -> str:
    """Whether every searched method's chosen rate lies inside the grid, as the report states it."""
    edge = rates_at_the_edge(report)
    if not edge:
        return "Learning-rate grid: every chosen rate lies inside it."
    return f"Learning-rate grid: NOT a choice for {', '.join(edge)} (chosen at the edge of the grid; extend it)."
