"""SGPO's method without a model: improver targets and filters (`improver`), the pair filter (`pairs`), the
objectives on log-probabilities (`objectives`), the phase schedule (`schedule`) and a step's statistics and health
signal (`step_stats`). Plain Python and tensor arithmetic, tested on hand-made cases."""
