"""The improver's rewrite speculated from its draft (``improver_speculative_tokens``): its generation time against
plain generation and against the draft's, and the share of rewrite tokens taken from the draft.

    python benchmarks/speculation.py                          # the toy world's shipped checkpoint, ~2 min
    python benchmarks/speculation.py --quick --output-dir /tmp # CI: a few batches
    python benchmarks/speculation.py --real-start --repeats 8  # SmolLM2 after the real task's SFT, ~10 min
    python benchmarks/speculation.py --real-start --step1-updates 24 --repeats 6   # ... and after Step 1, ~16 min

The command's entry point; the measurement is benchmarks/speed/speculation.py.
"""

import os


os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from benchmarks.speed.speculation import main  # noqa: E402


if __name__ == "__main__":
    main()
