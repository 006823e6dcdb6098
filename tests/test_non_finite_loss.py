"""A NaN loss stops training before the update, with a clear message and the last good state saved."""

import pytest
import torch
from safetensors.torch import load_file

from trl_sgpo import SGPOTrainer

from .helpers import conversational_dataset, make_config, tiny_model


def test_nan_loss_stops_training_and_saves_the_last_good_weights(tmp_path, tokenizer):
    trainer = SGPOTrainer(
        model=tiny_model(tokenizer),
        args=make_config(tmp_path, max_steps=4),
        train_dataset=conversational_dataset(8),
        processing_class=tokenizer,
    )
    forward = trainer.scorer.forward

    def poisoned_forward(model, *args, **kwargs):
        logps = forward(model, *args, **kwargs)
        return logps * float("nan") if trainer.state.global_step == 2 else logps

    trainer.scorer.forward = poisoned_forward
    with pytest.raises(
        FloatingPointError, match="Non-finite loss .* global step 2.*checkpoint-2.*resume_from_checkpoint"
    ):
        trainer.train()
    saved = load_file(str(tmp_path / "out" / "checkpoint-2" / "model.safetensors"))
    for name, parameter in trainer.model.named_parameters():
        assert torch.isfinite(parameter).all(), name
        if name in saved:
            torch.testing.assert_close(saved[name], parameter.detach(), rtol=0, atol=0)
