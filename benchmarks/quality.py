"""Does SGPO work? SGPO against its baselines and ablations on the built-in verifiable world.

    python benchmarks/quality.py --workers 2   # the full benchmark (3 seeds; see the results file for its time)
    python benchmarks/quality.py --quick       # a few steps per arm, for CI

The command's entry point; the benchmark is `benchmarks.toy` (its protocol: benchmarks/toy/main.py).
"""

import os


os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from benchmarks.toy.main import main  # noqa: E402


if __name__ == "__main__":
    main()
