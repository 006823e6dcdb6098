"""Load the command line's data: a local data file, a local folder, or a Hub data set id.

Accepted, in the order they are tried:

- a file ending in ``.json``, ``.jsonl``, ``.csv`` or ``.parquet`` (one split, ``train``);
- a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (its splits);
- any other folder: data files that `datasets.load_dataset` reads (its splits, e.g. ``train.jsonl``, ``test.jsonl``);
- a Hub data set id, downloaded or read from the local cache (offline: the cache only).

A name that is none of these gets an error naming the name and the fix before any model is loaded.
"""

import os

from datasets import Dataset, DatasetDict, IterableDataset, load_dataset, load_from_disk


DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
SAVE_TO_DISK_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
ACCEPTED = (
    "a .json/.jsonl/.csv/.parquet file, a folder written by `save_to_disk`, a folder of such data files, or a Hub "
    "data set id"
)


def is_offline() -> bool:
    """Whether the Hub is switched off (``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` set to a true value)."""
    return any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE") for name in OFFLINE_VARIABLES)


def _has_data(path: str, extension: str) -> bool:
    """Whether a JSON lines or CSV file holds a row (a header alone, or blank lines, hold none)."""
    if extension not in (".jsonl", ".csv", ".json"):
        return True
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = [line for line in (next(handle, "") for _ in range(2)) if line.strip()]
    return len(lines) >= (2 if extension == ".csv" else 1)


def load_splits(
    name: str, option: str = "--dataset_name", config: str | None = None, streaming: bool = False
) -> dict[str, Dataset | IterableDataset]:
    """All splits of ``name`` (see the module docstring), by split name."""
    path = os.path.expanduser(name)
    if os.path.isfile(path):
        extension = os.path.splitext(path)[1].lower()
        if extension not in DATA_FILE_BUILDERS:
            raise ValueError(f"{option} {name!r}: unsupported file type {extension!r}. Use {ACCEPTED}.")
        if os.path.getsize(path) == 0 or not _has_data(path, extension):
            raise ValueError(f"{option} {name!r} is empty: it holds no rows. Write your rows to it first.")
        return dict(load_dataset(DATA_FILE_BUILDERS[extension], data_files=path, streaming=streaming))
    if os.path.isdir(path):
        if any(os.path.isfile(os.path.join(path, marker)) for marker in SAVE_TO_DISK_MARKERS):
            data = load_from_disk(path)
            return dict(data) if isinstance(data, DatasetDict) else {"train": data}
        try:
            return dict(load_dataset(path, name=config, streaming=streaming))
        except Exception as error:
            raise ValueError(
                f"{option} {name!r} is a folder, but neither a `save_to_disk` folder nor one of data files "
                f"({type(error).__name__}: {error}). Use {ACCEPTED}."
            ) from error
    if name.startswith((".", "/", "~")) or os.path.splitext(name)[1].lower() in DATA_FILE_BUILDERS:
        raise FileNotFoundError(
            f"{option} {name!r} does not exist (looked for it from {os.getcwd()!r}). Check the path; {option} takes "
            f"{ACCEPTED}."
        )
    try:
        return dict(load_dataset(name, name=config, streaming=streaming))
    except Exception as error:
        where = (
            "the Hub is switched off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and it is not in the local cache"
            if is_offline()
            else "it could not be loaded from the Hub"
        )
        raise ValueError(
            f"{option} {name!r} is not a local file or folder, and {where} ({type(error).__name__}: {error}). Pass "
            f"{ACCEPTED.replace('or a Hub', 'or, online, a Hub')}; to use a Hub data set offline, load it once online "
            "so that it is cached, or save it with `save_to_disk` and pass that folder."
        ) from error


def pick_split(splits: dict, split: str, name: str, option: str) -> Dataset | IterableDataset:
    """One split, or an error listing the splits there are."""
    if split not in splits:
        raise ValueError(
            f"{option} {name!r} has no split {split!r} (it has {sorted(splits)}). Choose one with "
            f"{'--dataset_train_split' if option == '--dataset_name' else '--dataset_test_split'}."
        )
    return splits[split]


def load_train_and_eval(
    dataset_name: str,
    eval_dataset_name: str | None = None,
    train_split: str = "train",
    test_split: str = "test",
    config: str | None = None,
    streaming: bool = False,
) -> tuple[Dataset | IterableDataset, Dataset | IterableDataset | None]:
    """The training split of ``dataset_name``, and the eval data: ``eval_dataset_name`` (its ``test_split``, or its
    only split) if given, else the ``test_split`` of ``dataset_name`` if it has one, else ``None``."""
    splits = load_splits(dataset_name, "--dataset_name", config, streaming)
    train = pick_split(splits, train_split, dataset_name, "--dataset_name")
    if isinstance(train, Dataset) and len(train) == 0:
        raise ValueError(f"--dataset_name {dataset_name!r} has no rows in its {train_split!r} split.")
    if eval_dataset_name is None:
        return train, splits.get(test_split)
    eval_splits = load_splits(eval_dataset_name, "--eval_dataset_name", config, streaming)
    if len(eval_splits) == 1:
        return train, next(iter(eval_splits.values()))
    return train, pick_split(eval_splits, test_split, eval_dataset_name, "--eval_dataset_name")
