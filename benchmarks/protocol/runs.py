"""The runs of a quality benchmark: one arm at one learning rate and one seed each, run in a pool of worker
processes, and the runs cache: with a cache folder, each result is saved as it ends and a later part of the
benchmark reruns nothing an earlier one saved."""

import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Job:
    """One run: an arm, its learning rate and seed, the benchmark's settings, whether the test split is scored."""

    arm: str
    learning_rate: float
    seed: int
    settings: Any  # the benchmark's own Settings: data, updates, sampling, evaluation sizes, grid, seeds
    evaluate_test: bool = True


@dataclass
class RunResult:
    """What a run measured: its scores on validation (and test), its training time and its diagnostics."""

    arm: str
    learning_rate: float
    seed: int
    validation: dict[str, float]
    test: dict[str, float] | None
    seconds: float
    diagnostics: dict[str, float] = field(default_factory=dict)


Runner = Callable[[Job], RunResult]  # a module-level function: worker processes receive it by name


def result_path(cache_dir: str, job: Job) -> str:
    name = f"{job.arm}-lr{job.learning_rate:g}-seed{job.seed}-test{int(job.evaluate_test)}.json"
    return os.path.join(cache_dir, name)


def has_saved_runs(cache_dir: str, arm: str) -> bool:
    """Whether an earlier part saved a run of ``arm`` in ``cache_dir``."""
    return os.path.isdir(cache_dir) and any(name.startswith(f"{arm}-lr") for name in os.listdir(cache_dir))


def cache_folder_name(settings: Any) -> str:
    """The folder of the runs made with these settings: every setting but the seeds and the grid, which parts vary
    (and which the runs' own file names record)."""
    shared = {k: v for k, v in asdict(settings).items() if k not in ("seeds", "learning_rates", "checkpoint")}
    shared["start"] = os.path.basename(settings.checkpoint)
    digest = hashlib.sha1(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:10]
    return f"{shared['start']}-{digest}"


def run_all(jobs: list[Job], workers: int, runner: Runner, cache_dir: str | None = None) -> list[RunResult]:
    """Every job's result; with ``cache_dir``, a job whose result an earlier part saved there is not run again."""
    cached = {}
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        for index, job in enumerate(jobs):
            if os.path.isfile(path := result_path(cache_dir, job)):
                with open(path) as handle:
                    cached[index] = RunResult(**json.load(handle))
    todo = [job for index, job in enumerate(jobs) if index not in cached]
    fresh = []

    def keep(job: Job, result: RunResult) -> None:  # saved as each run ends: a part stopped midway loses one run
        fresh.append(result)
        if cache_dir:
            with open(result_path(cache_dir, job), "w") as handle:
                json.dump(asdict(result), handle, indent=1)

    if workers <= 1 or len(todo) <= 1:
        for job in todo:
            keep(job, runner(job))
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for job, result in zip(todo, pool.imap(runner, todo, chunksize=1)):
                keep(job, result)
    fresh_results = iter(fresh)
    return [cached[index] if index in cached else next(fresh_results) for index in range(len(jobs))]
