"""The learning-rate search of a quality benchmark: each method's rate chosen on validation (first seed), then every
seed of the chosen settings. Test scores play no part in any choice."""

import os
from dataclasses import asdict
from typing import Any

from benchmarks.protocol.runs import Job, Runner, result_path, run_all


def run_benchmark(
    settings: Any,
    arms: tuple[str, ...],
    workers: int,
    *,
    arm_table: dict[str, tuple[str, dict | None]],
    searched_methods: tuple[str, ...],
    runner: Runner,
    headline: str,
    cache_dir: str | None = None,
    only_cached: tuple[str, ...] = (),
) -> dict:
    """Search each method's learning rate on validation (first seed), then run every seed of the chosen settings.

    ``arm_table`` maps an arm to the method whose learning rate it uses (and its trainer overrides); the methods in
    ``searched_methods`` are searched, their variants use the chosen rate. Arms in ``only_cached`` are not run:
    their results saved in ``cache_dir`` by an earlier part are merged in, if any."""

    def runnable(job: Job) -> bool:
        return job.arm not in only_cached or os.path.isfile(result_path(cache_dir, job))

    first_seed, other_seeds = settings.seeds[0], settings.seeds[1:]
    searched = [arm for arm in searched_methods if any(arm_table[a][0] == arm for a in arms)]
    search = [Job(arm, lr, first_seed, settings) for arm in searched for lr in settings.learning_rates]
    search_results = run_all([job for job in search if runnable(job)], workers, runner, cache_dir)
    searched = [method for method in searched if any(r.arm == method for r in search_results)]
    chosen = {
        method: max((r for r in search_results if r.arm == method), key=lambda r: r.validation[headline]).learning_rate
        for method in searched
    }
    kept = [r for r in search_results if r.arm in arms and r.learning_rate == chosen[r.arm]]
    done = {(r.arm, r.seed) for r in kept}
    repeats = [
        Job(arm, chosen[arm_table[arm][0]], seed, settings)
        for arm in arms
        if arm_table[arm][0] in chosen
        for seed in settings.seeds
        if (arm, seed) not in done and (seed in other_seeds or arm not in searched_methods)
    ]
    final = kept + run_all([job for job in repeats if runnable(job)], workers, runner, cache_dir)
    final.sort(key=lambda r: (list(arms).index(r.arm), r.seed))
    return {
        "search": [asdict(r) for r in search_results],
        "final": [asdict(r) for r in final],
        "chosen_learning_rate": chosen,
    }
