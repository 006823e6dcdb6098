"""The command line: `trl-sgpo` and `examples/sgpo.py` (`command.run`), a `TrlParser` script over `SGPOConfig`."""

from .command import main, make_parser, parse_args, run


__all__ = ["main", "make_parser", "parse_args", "run"]
