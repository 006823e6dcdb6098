"""improver_format='next_turn': the improver as the next turn of the policy's own conversation.

What is checked on real models (the shipped toy checkpoint and tiny random models): the conversation is the policy's
prompt and draft followed by the new turn; one forward pass over it gives the same log-probabilities as the separate
passes; the rewrite generated on the drafts' cache equals the one generated from scratch; training runs and logs;
bad settings fail when the config (or, for the chat template, the trainer) is built.
"""

import pytest
import torch

from trl_sgpo import SGPOConfig, SGPOTrainer
from trl_sgpo.method.improver import improver_targets, next_turn_suffix
from trl_sgpo.method.objectives import token_mean_nll
from trl_sgpo.method.schedule import DPO, IMPROVER
from trl_sgpo.step.scoring import drafts_in_tail
from trl_sgpo.toy import build_char_tokenizer, load_toy_model, make_dataset

from .helpers import conversational_dataset, make_config, standard_dataset, tiny_model
from .test_training import SGPO_STATS, TRL_STATS


INSTRUCTION = "improve"


def _logged(trainer, name):
    return [log[name] for log in trainer.state.log_history if name in log]


def _toy_trainer(tmp_path, **overrides):
    """The shipped checkpoint on its own prompts: drafts of several lengths, some cut at max_new_tokens."""
    model, tokenizer = load_toy_model()
    settings = dict(
        improver_format="next_turn",
        improver_instruction=INSTRUCTION,
        per_device_train_batch_size=8,
        max_new_tokens=10,
        max_length=256,
        improver_temperature=0.0,
        generation_kwargs={},
    )
    settings.update(overrides)
    trainer = SGPOTrainer(
        model=model,
        args=make_config(tmp_path, **settings),
        train_dataset=make_dataset("plain", "train", 16, seed=0),
        processing_class=tokenizer,
    )
    return trainer, tokenizer


def _mixed_trainer(tmp_path, **overrides):
    """A toy trainer whose first batch has drafts that ended and drafts cut at max_new_tokens (both code paths)."""
    for max_new_tokens in range(3, 25):
        trainer, tokenizer = _toy_trainer(tmp_path, max_new_tokens=max_new_tokens, **overrides)
        if {draft.ended for draft in _batch(trainer).drafts} == {True, False}:
            return trainer, tokenizer
    raise AssertionError("no max_new_tokens gives both ended and cut drafts")


def _batch(trainer, keep_cache=False, seed=0):
    rows = trainer.train_dataset[:8]
    torch.manual_seed(seed)
    return trainer.draft(trainer.model, rows, keep_cache=keep_cache)


def _targets(trainer, batch):
    """The step's improver targets for ``batch`` under the trainer's config (`improver.improver_targets`)."""
    return improver_targets(batch.drafts, batch.references, trainer.args)[0]


def test_the_improver_prompt_is_the_policy_conversation_continued(tmp_path):
    trainer, tokenizer = _toy_trainer(tmp_path)
    batch = _batch(trainer)
    prompts = trainer.layout.improver_prompts(batch)
    assert prompts.rejected_lengths is not None
    for row, (prompt, draft) in enumerate(zip(batch.prompts, batch.drafts)):
        draft_text = tokenizer.decode(draft.token_ids)
        policy = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        expected = tokenizer.apply_chat_template(
            [*prompt, {"role": "assistant", "content": draft_text}, {"role": "user", "content": INSTRUCTION}],
            tokenize=False,
            add_generation_prompt=True,
        )
        text = tokenizer.decode(prompts.ids[row][prompts.mask[row].bool()])
        assert text == expected, row
        assert text.startswith(policy + draft_text)
        assert text.endswith("</s><|user|>improve<|end|><|assistant|>")


def test_fused_forward_equals_the_separate_passes(tmp_path):
    trainer, _ = _mixed_trainer(tmp_path)
    batch = _batch(trainer)
    prompts = trainer.layout.improver_prompts(batch)
    targets, rejected = trainer.layout.pad(_targets(trainer, batch)), trainer.layout.pad(batch.drafts)
    target_ids, target_mask = targets.ids, targets.mask
    rejected_ids, rejected_mask = rejected.ids, rejected.mask
    model = trainer.model
    model.eval()
    with torch.no_grad():
        tail = max(r + a for r, a in zip(prompts.rejected_lengths, prompts.after_lengths))
        fused = trainer.scorer.forward(model, prompts.ids, prompts.mask, target_ids, target_mask, prompt_tail=tail)
        fused_rejected = drafts_in_tail(fused[:, :tail], prompts)
        separate_rejected = trainer.scorer.forward(
            model, batch.prompt_ids, batch.prompt_mask, rejected_ids, rejected_mask
        )
        separate_targets = trainer.scorer.forward(model, prompts.ids, prompts.mask, target_ids, target_mask)
    assert fused_rejected.shape == rejected_ids.shape
    torch.testing.assert_close(fused_rejected * rejected_mask, separate_rejected * rejected_mask, atol=1e-5, rtol=0)
    torch.testing.assert_close(fused[:, tail:] * target_mask, separate_targets * target_mask, atol=1e-5, rtol=0)
    # the sequence sums the DPO loss uses, and real numbers (not zeros from a mask that hides everything)
    torch.testing.assert_close(
        (fused_rejected * rejected_mask).sum(1), (separate_rejected * rejected_mask).sum(1), atol=1e-5, rtol=0
    )
    assert (separate_rejected * rejected_mask).sum(1).lt(0).all()

    # The same through the scorer the step calls: the improver's loss and the drafts' gradients of the fused pass
    # equal those of the two passes.
    model.train()
    target_logps, rejected_logps = trainer.scorer.improver_logps(model, prompts, targets, True)
    separate_logps, none = trainer.scorer.improver_logps(model, prompts, targets, False)
    assert none is None
    loss, separate_loss = (token_mean_nll(logps, target_mask).sum() for logps in (target_logps, separate_logps))
    torch.testing.assert_close(loss, separate_loss, atol=1e-5, rtol=0)
    fused_sum = (rejected_logps * rejected_mask).sum()
    separate_sum = (
        trainer.scorer.forward(model, batch.prompt_ids, batch.prompt_mask, rejected_ids, rejected_mask) * rejected_mask
    ).sum()
    grads = [torch.autograd.grad(value, list(model.parameters())) for value in (fused_sum, separate_sum)]
    for fused_grad, separate_grad in zip(*grads):
        # Relative to each gradient's norm: on the trained checkpoint single entries of the embedding gradient differ
        # by up to 1e-4 in float32 (the two layouts round differently; the worst relative norm measured was 5e-6),
        # while a wrong mask or an off-by-one position moves whole gradients (relative differences of 1e-1).
        assert ((fused_grad - separate_grad).norm() / separate_grad.norm().clamp(min=1e-12)).item() < 1e-4


def test_greedy_rewrites_are_the_same_with_and_without_the_drafts_cache(tmp_path):
    trainer, _ = _mixed_trainer(tmp_path)
    model = trainer.model
    model.eval()
    with_cache = _batch(trainer, keep_cache=True)
    assert with_cache.draft_cache is not None and with_cache.draft_cache.cache is not None
    without_cache = _batch(trainer, keep_cache=False)
    assert [d.token_ids for d in with_cache.drafts] == [d.token_ids for d in without_cache.drafts]
    assert {d.ended for d in with_cache.drafts} == {True, False}  # padding inside the cached block, and cut drafts

    cached_prompts = trainer.layout.improver_prompts(with_cache)
    cached_length = with_cache.draft_cache.cache.get_seq_length()
    # only the last draft token and the new turn are fed to the model; the rest is read from the cache
    assert cached_length == cached_prompts.generation_ids.size(1) - max(cached_prompts.after_lengths) - 1
    fed = []
    generate = model.generate

    def recording_generate(*args, **kwargs):
        fed.append(kwargs)
        return generate(*args, **kwargs)

    model.generate = recording_generate
    try:
        cached = trainer.sampler(
            model,
            cached_prompts.generation_ids,
            cached_prompts.generation_mask,
            "improver",
            with_cache.draft_cache,
        )
        plain_prompts = trainer.layout.improver_prompts(without_cache)
        plain = trainer.sampler(model, plain_prompts.ids, plain_prompts.mask, "improver")
    finally:
        model.generate = generate
    assert any(value is not None and hasattr(value, "get_seq_length") for value in fed[0].values())  # cache passed
    assert with_cache.draft_cache.cache is None  # used up, freed before the backward pass
    assert [c.token_ids for c in cached] == [c.token_ids for c in plain]
    assert [c.ended for c in cached] == [c.ended for c in plain]
    assert any(c.token_ids for c in cached)


def test_a_dpo_step_generates_the_rewrite_on_the_drafts_cache(tmp_path):
    trainer, _ = _mixed_trainer(tmp_path, improver_warmup_steps=0, improver_steps=0, dpo_steps=1)
    calls = []
    sample = trainer.sampler

    def recording_sample(model, prompt_ids, prompt_mask, role, cache=None, **kwargs):
        calls.append((role, cache is not None and cache.cache is not None, prompt_ids.size(1)))
        return sample(model, prompt_ids, prompt_mask, role, cache)

    trainer.sampler = recording_sample
    trainer.train()
    assert trainer.phase_callback.phase_history == [DPO] * 4
    assert [(role, continued) for role, continued, _ in calls] == [("policy", False), ("improver", True)] * 4
    assert len(_logged(trainer, "sgpo/pairs_kept")) == 4 and len(_logged(trainer, "sgpo/improver_loss")) == 4


def test_next_turn_training_runs_both_phases_and_logs_every_stat(tmp_path, tokenizer):
    trainer = SGPOTrainer(
        model=tiny_model(tokenizer),
        args=make_config(
            tmp_path,
            improver_format="next_turn",
            improver_instruction=INSTRUCTION,
            improver_warmup_steps=1,
            improver_steps=1,
            dpo_steps=2,
            max_steps=4,
        ),
        train_dataset=conversational_dataset(8),
        processing_class=tokenizer,
    )
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.phase_callback.phase_history == [IMPROVER, IMPROVER, DPO, DPO]
    missing = [name for name in TRL_STATS + SGPO_STATS if not _logged(trainer, name)]
    assert not missing, f"never logged: {missing}"
    assert all(torch.isfinite(torch.tensor(_logged(trainer, "loss"))))
    changed = [name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])]
    assert len(changed) == len(before)


def test_next_turn_with_text_prompts_continues_as_plain_text(tmp_path, tokenizer):
    assert next_turn_suffix("improve", "reverse abc =", tokenizer) == "</s>\nimprove\n"
    trainer = SGPOTrainer(
        model=tiny_model(tokenizer),
        args=make_config(tmp_path, improver_format="next_turn", improver_instruction=INSTRUCTION, max_steps=2),
        train_dataset=standard_dataset(8),
        processing_class=tokenizer,
    )
    trainer.train()
    assert _logged(trainer, "logps/rejected") and _logged(trainer, "sgpo/improver_loss")


def test_the_instruction_may_show_the_reference(tmp_path, tokenizer):
    trainer = SGPOTrainer(
        model=tiny_model(tokenizer),
        args=make_config(tmp_path, improver_format="next_turn", improver_instruction="improve toward {reference}"),
        train_dataset=conversational_dataset(8),
        processing_class=tokenizer,
    )
    batch = _batch(trainer)
    prompts = trainer.layout.improver_prompts(batch)
    texts = [tokenizer.decode(row[mask.bool()]) for row, mask in zip(prompts.ids, prompts.mask)]
    for text, reference in zip(texts, batch.reference_texts):
        assert text.endswith(f"<|user|>improve toward {reference}<|end|><|assistant|>")
    trainer.train()
    assert _logged(trainer, "sgpo/improver_loss")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"improver_format": "next-turn"},
            "improver_format 'next-turn': choose one of ['auto', 'template', 'next_turn']",
        ),
        ({"improver_format": "next_turn", "improver_instruction": "fix {response}"}, "improver_instruction shows"),
        ({"improver_format": "next_turn", "improver_instruction": "{prompt}"}, "{prompt}"),
        ({"improver_format": "next_turn", "improver_instruction": "  "}, "improver_instruction must be a non-empty"),
    ],
)
def test_bad_next_turn_settings_fail_when_the_config_is_built(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("{", r"\{")):
        SGPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **overrides)


def test_a_chat_template_that_does_not_continue_the_policy_prompt_is_refused_before_training(tmp_path, tokenizer):
    # Its generation prompt has a space that an earlier assistant turn does not: the draft would not continue it.
    tokenizer.chat_template = tokenizer.chat_template.replace(
        "{% if add_generation_prompt %}<|assistant|>", "{% if add_generation_prompt %}<|assistant|> "
    )
    with pytest.raises(ValueError, match="differs from the policy's own prompt"):
        SGPOTrainer(
            model=tiny_model(tokenizer),
            args=make_config(tmp_path, improver_format="next_turn"),
            train_dataset=conversational_dataset(8),
            processing_class=tokenizer,
        )


def test_the_builtin_command_uses_the_short_instruction(tmp_path):
    from trl_sgpo.cli.command import TOY_IMPROVER_INSTRUCTION, main
    from trl_sgpo.config import DEFAULT_IMPROVER_INSTRUCTION

    result = main(
        [
            "--output_dir",
            str(tmp_path / "run"),
            "--improver_format",
            "next_turn",
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "8",
            "--builtin_train_prompts",
            "16",
            "--builtin_eval_prompts",
            "8",
            "--log_completions",
            "false",
            "--improver_warmup_steps",
            "1",
        ]
    )
    assert set(result) == {"before", "after"}
    card = (tmp_path / "run" / "README.md").read_text()
    # the run was prompted with the instruction the shipped checkpoint learned, not the library's default
    assert TOY_IMPROVER_INSTRUCTION != DEFAULT_IMPROVER_INSTRUCTION
    assert f"| `improver_instruction` | `{TOY_IMPROVER_INSTRUCTION}` |" in card


# ------------------------------------------------------------------------------------------ improver_format="auto"


def _built_format(tmp_path, tokenizer, dataset) -> str:
    trainer = SGPOTrainer(
        model=tiny_model(tokenizer),
        args=make_config(tmp_path, improver_format="auto", improver_instruction=INSTRUCTION),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    return trainer.args.improver_format


def test_auto_is_the_default_and_resolves_when_the_trainer_is_built(tmp_path):
    assert SGPOConfig(output_dir=str(tmp_path), use_cpu=True).improver_format == "auto"
    tokenizer = build_char_tokenizer()
    # conversational data, and a chat template that continues the policy's prompt: the next turn
    assert _built_format(tmp_path / "a", tokenizer, conversational_dataset(8)) == "next_turn"
    # plain-text prompts: the template
    assert _built_format(tmp_path / "b", tokenizer, standard_dataset(8)) == "template"


def test_auto_falls_back_to_the_template_when_the_chat_template_rewrites_earlier_turns(tmp_path):
    """A chat template that writes a past assistant turn differently from the generation prompt (as templates that
    drop a past turn's reasoning do) would break the draft's prefix: "auto" then takes the single-turn template."""
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = tokenizer.chat_template.replace(
        "{% elif message['role'] == 'assistant' %}<|assistant|>", "{% elif message['role'] == 'assistant' %}<|user|>"
    )
    assert "<|user|>{{ message['content'] }}</s>" in tokenizer.chat_template  # the edit took
    assert _built_format(tmp_path, tokenizer, conversational_dataset(8)) == "template"


def test_generation_uses_the_cache_with_gradient_checkpointing_on(tmp_path):
    """Gradient checkpointing (on by default on a GPU) made upstream generate with ``use_cache=False``: every token
    recomputed the whole sequence and the next turn had no draft cache. Both roles now generate with the cache, the
    rewrite continues from the drafts' cache, and checkpointing is back on (with its kwargs) for the backward pass."""
    trainer, _ = _mixed_trainer(
        tmp_path,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        improver_warmup_steps=0,
        improver_steps=0,
        dpo_steps=1,
        max_steps=1,
    )
    model = trainer.model
    assert model.is_gradient_checkpointing
    calls, generate = [], model.generate

    def recording_generate(*args, **kwargs):
        cache = next((value for value in kwargs.values() if hasattr(value, "get_seq_length")), None)
        calls.append(
            (
                kwargs["generation_config"].use_cache,
                model.is_gradient_checkpointing,
                cache.get_seq_length() if cache is not None else 0,
                kwargs["input_ids"].size(1),
            )
        )
        return generate(*args, **kwargs)

    model.generate = recording_generate
    laid_out, improver_prompts = [], trainer.layout.improver_prompts
    trainer.layout.improver_prompts = lambda batch: laid_out.append(improver_prompts(batch)) or laid_out[-1]
    trainer.train()
    (policy_cache, policy_checkpointing, policy_cached, _), improver = calls
    improver_cache, improver_checkpointing, improver_cached, improver_width = improver
    assert policy_cache and improver_cache
    assert not policy_checkpointing and not improver_checkpointing  # off while generating
    assert policy_cached == 0 and improver_cached > 0
    # the improver is fed only what the cache does not hold: the last draft token and the new turn of each row
    assert improver_width - improver_cached == max(laid_out[0].after_lengths) + 1
    assert model.is_gradient_checkpointing  # back on after generation
    assert _logged(trainer, "sgpo/improver_loss")
