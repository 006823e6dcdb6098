"""The speed benchmarks (``python benchmarks/speed.py``, ``speed_sweep.py``, ``speculation.py``): SGPO's steps
against TRL's OnlineDPOTrainer's, in time and peak memory.

`main` is the command (what is measured, and why), `suite` its three parts in turn, `configuration` one
configuration's run, `settings` what sets one, `data` its tokenizer and rows, `builders` its model and trainers,
`instrumentation` one timed step, `memory` the peak-memory probe, `report` the goals and the tables; `sweep` runs
configurations over a length x batch grid, `speculation` times the rewrite speculated from its draft.
"""
