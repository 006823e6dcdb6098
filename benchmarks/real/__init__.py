"""The real-model benchmark (``python benchmarks/real_quality.py``) and what it stands on: SmolLM2-135M-Instruct
converted offline (`smollm2`), the verifiable instruction-following task (`task`) and its scoring (`evaluation`),
the start after SFT to its plateau (`start`), SGPO's Step 1 built once per seed and target (`step1`), the arms
(`arms`), the report (`report`) and the command (`main`); and the pair probe (``python benchmarks/pair_probe.py``,
`probe`), which judges Step 1's rewrites with the task's checker before any long run."""
