"""The pair-precision probe on the real task: each reward-free option's share of DPO pairs whose chosen side is better.

    python benchmarks/pair_probe.py            # writes benchmarks/results/pair_probe.{md,json}
    python benchmarks/pair_probe.py --quick    # a few prompts on CI's stand-in start

The command's entry point; the probe is benchmarks/real/probe.py.
"""

from benchmarks.real.probe import main


if __name__ == "__main__":
    main()
