"""SGPO (Self-Generated Preference Optimization, arXiv:2507.20181) for TRL."""

import os
import warnings


# We build on `trl.experimental.online_dpo` on purpose (pinned to TRL 1.16); silence its import-time warning.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
# transformers 5 deprecates `is_gradient_checkpointing`, which TRL 1.16 and PEFT still read at every generation and
# save: a FutureWarning the user cannot act on, once per save. Only that message is silenced.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

from .config import DEFAULT_IMPROVER_INSTRUCTION, DEFAULT_IMPROVER_TEMPLATE, SGPOConfig  # noqa: E402
from .method.schedule import PhaseSchedule  # noqa: E402
from .run.phases import SGPOPhaseCallback  # noqa: E402
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
