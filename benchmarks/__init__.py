"""The benchmarks, as a package: importable from a checkout installed with ``pip install -e .``.

The files at this level are the commands (``python benchmarks/<name>.py``, as the README and the docs give them):
each only sets its process's environment and calls its module's ``main``, so that no module is both run as a
script and imported. What they run lives in:

- `benchmarks.protocol`: what the benchmarks share, written once: the runs and their cache, the learning-rate search,
  the arms both quality benchmarks train, the pair diagnostics, the gates, the tables, the quartiles;
- `benchmarks.toy`: the quality benchmark on the built-in verifiable world;
- `benchmarks.real`: the quality benchmark on SmolLM2-135M-Instruct, with the model's offline conversion, the task,
  its scoring and the start;
- `benchmarks.speed`: the speed suite, its configurations and probes, the sweep and the speculated rewrite.

``results/`` holds the reports the commands wrote.
"""
