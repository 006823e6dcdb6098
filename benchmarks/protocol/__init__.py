"""The protocol the benchmarks share, written once: the runs and their cache (`runs`), the learning-rate search
(`search`), the arms both quality benchmarks train (`arms`), the pair diagnostics (`pairs`), the gates and the goal
(`gates`), the report's cells and tables (`tables`), the commands' flags, header and files (`command`), and the
quartiles of repeated timings (`quartiles`)."""
