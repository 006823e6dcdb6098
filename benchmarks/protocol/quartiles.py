"""Medians and quartiles of repeated measurements, as the speed benchmarks report them (a timing goal is judged by
the upper quartile of its paired per-repeat ratio)."""

import math


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile, q in [0, 1]."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(values: list[float]) -> dict[str, float]:
    """The median, the quartiles, their range and the extremes."""
    return {
        "median": percentile(values, 0.5),
        "q1": percentile(values, 0.25),
        "q3": percentile(values, 0.75),
        "iqr": percentile(values, 0.75) - percentile(values, 0.25),
        "min": min(values),
        "max": max(values),
    }
