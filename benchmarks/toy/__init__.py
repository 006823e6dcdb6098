"""The toy quality benchmark (``python benchmarks/quality.py``): SGPO against its baselines and ablations on the
built-in verifiable world. `arms` trains and scores one run, `report` states the gate, the goal and the table,
`main` is the command."""
