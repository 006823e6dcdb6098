"""The model card written on save."""

from trl_sgpo import SGPOTrainer

from .helpers import conversational_dataset, make_config, rule_sampler, tiny_model


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


def test_the_card_says_what_the_run_did_with_the_settings_as_they_acted(tmp_path, tokenizer):
    from peft import LoraConfig

    model = tiny_model(tokenizer)
    model.config._name_or_path = "my-org/tiny-base"  # as if loaded from the Hub
    trainer = SGPOTrainer(
        model=model,
        args=make_config(tmp_path, improver_format="next_turn", improver_instruction="improve", max_steps=3),
        train_dataset=conversational_dataset(4),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    trainer.sampler = rule_sampler(tokenizer)  # drafts 'cbax', rewrites 'cba': every pair kept
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    card = (tmp_path / "final" / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: peft" in front and "base_model: my-org/tiny-base" in front  # an adapter's card
    assert "question = 'reverse abc'" in card and "time machine" not in card  # a prompt of the training data
    steps = trainer.run_summary.figures
    assert (steps["step1_steps"], steps["dpo_steps"]) == (2, 1)  # improver, DPO, improver: the test schedule
    assert f"| DPO steps | {steps['dpo_steps']} |" in card and "| DPO pairs kept | 4 of 4 drafted (100%)" in card
    assert "| `improver_instruction` | `improve` |" in card and "`improver_template`" not in card  # the format used
    assert "| `improver_top_p` | `1.0 (the policy's)` |" in card  # resolved, not None
