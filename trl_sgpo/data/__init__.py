"""The training data: its formats and checks (`formats`), files (`files`), prompt lengths (`prompt_lengths`), and
reading a row's reference (`rows`)."""

from .formats import messages_to_prompt_completion, prepare_training_data, validate_prompt_completion_dataset


__all__ = ["messages_to_prompt_completion", "prepare_training_data", "validate_prompt_completion_dataset"]
