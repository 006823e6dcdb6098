"""The real-model benchmark (``python benchmarks/real_quality.py``) and what it stands on: SmolLM2-135M-Instruct
converted offline (`smollm2`), the verifiable instruction-following task (`task`) and its scoring (`evaluation`),
the start after SFT to its plateau (`start`), the arms (`arms`), the report (`report`) and the command (`main`)."""
