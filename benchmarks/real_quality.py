"""Does SGPO improve a real instruct model? SGPO against its baselines on SmolLM2-135M-Instruct.

    python benchmarks/real_quality.py --workers 2                 # the full benchmark (see the results file's time)
    python benchmarks/real_quality.py --workers 2 --arms sft spin  # a part; parts merge into one table
    python benchmarks/real_quality.py --quick                      # a few steps, one seed, for CI

The command's entry point; the benchmark is `benchmarks.real` (its protocol: benchmarks/real/main.py).
"""

import os


os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from benchmarks.real.main import main  # noqa: E402


if __name__ == "__main__":
    main()
