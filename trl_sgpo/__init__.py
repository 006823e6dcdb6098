"""SGPO (Self-Generated Preference Optimization, arXiv:2507.20181) for TRL."""

import os


# We build on `trl.experimental.online_dpo` on purpose (pinned to TRL 1.16); silence its import-time warning.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from .config import DEFAULT_IMPROVER_INSTRUCTION, DEFAULT_IMPROVER_TEMPLATE, SGPOConfig  # noqa: E402
from .method.schedule import PhaseSchedule  # noqa: E402
from .run.phases import SGPOPhaseCallback
from .run.sample_table import SGPOSampleTableCallback  # noqa: E402
from .trainer import SGPOTrainer  # noqa: E402


__version__ = "0.1.0"

__all__ = [
    "DEFAULT_IMPROVER_INSTRUCTION",
    "DEFAULT_IMPROVER_TEMPLATE",
    "PhaseSchedule",
    "SGPOConfig",
    "SGPOPhaseCallback",
    "SGPOSampleTableCallback",
    "SGPOTrainer",
]
