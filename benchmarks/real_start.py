"""The start of the real-model benchmark: SmolLM2-135M-Instruct, SFT on the real task's SFT set to its plateau.

    python benchmarks/real_start.py          # builds once (about 20 min on 2 CPU cores), prints the folder

The command's entry point; the build is benchmarks/real/start.py.
"""

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.real.start import main  # noqa: E402


if __name__ == "__main__":
    main()
