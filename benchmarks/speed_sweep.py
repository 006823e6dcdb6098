"""How the cost of an SGPO DPO-phase step grows with completion length and batch size, against TRL's OnlineDPO.

    python benchmarks/speed_sweep.py --workers 2   # SmolLM2-135M-Instruct, LoRA: results/speed_sweep.{md,json}
    python benchmarks/speed_sweep.py --quick         # the tiny random Llama, two small points: seconds, for CI

The command's entry point; the sweep is benchmarks/speed/sweep.py.
"""

from benchmarks.speed.sweep import main


if __name__ == "__main__":
    main()
