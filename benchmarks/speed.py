"""Speed and memory of one SGPO step against one step of TRL's `OnlineDPOTrainer`, on the same model and batch.

    python benchmarks/speed.py                      # the suite, 23 min: benchmarks/results/speed.{md,json}
    python benchmarks/speed.py --quick --output-dir /tmp/speed    # the suite at toy sizes, a few minutes (CI)
    python benchmarks/speed.py --model-size small   # one configuration: benchmarks/results/speed_small.{md,json}

The command's entry point; what it measures and how: benchmarks/speed/main.py. The suite, the memory probes and the
sweep run this file again, each run in a fresh process.
"""

import os


os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: see benchmarks/speed/main.py
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.speed.main import main  # noqa: E402


if __name__ == "__main__":
    main()
