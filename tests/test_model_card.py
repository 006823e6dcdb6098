"""The model card written on save."""

from trl_sgpo import SGPOTrainer

from .helpers import conversational_dataset, make_config, tiny_model


def test_saved_model_has_an_sgpo_model_card(tmp_path, tokenizer):
    trainer = SGPOTrainer(
        model=tiny_model(tokenizer),
        args=make_config(tmp_path),
        train_dataset=conversational_dataset(4),
        processing_class=tokenizer,
    )
    trainer.dataset_name = "my-org/my-prompts"
    trainer.save_model(str(tmp_path / "final"))
    card = (tmp_path / "final" / "README.md").read_text()
    assert "- trl" in card and "- sgpo" in card
    assert "@article{lee2025sgpo" in card and "2507.20181" in card
    assert "my-org/my-prompts" in card  # the data set
    assert "| `improver_template` | `{prompt}\\ndraft: {response}\\nfix:` |" in card  # the SGPO config
    assert "| `pair_source` | `sgpo` |" in card and "| `learning_rate` | `0.001` |" in card
    assert "- Transformers:" in card and "- TRL:" in card  # framework versions
    assert card.index("## SGPO configuration") < card.index("## Citations")
    assert (tmp_path / "final" / "model.safetensors").exists()
    assert (tmp_path / "final" / "tokenizer_config.json").exists()
