"""The rewrite speculated from the draft (`trl_sgpo.step.speculation`): greedy output identical to plain generation,
sampled tokens distributed as plain sampling's, batched rows accepting different numbers of tokens on one KV cache."""

import math

import pytest
import torch
from transformers import DynamicCache, GenerationConfig, LlamaConfig, LlamaForCausalLM

from trl_sgpo.step.speculation import SpeculationStats, propose, speculative_generate, unsupported_settings, verify


VOCAB, EOS, PAD = 12, 1, 0


def _model(seed: int = 0, vocab: int = VOCAB) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # sharper logits, and attention that matters: a wrong token in the context changes them
        model.lm_head.weight.mul_(30)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(20)
            layer.self_attn.v_proj.weight.mul_(5)
    return model


def _left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.tensor([[PAD] * (width - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    return ids, mask


def _greedy(max_new_tokens: int) -> GenerationConfig:
    return GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=EOS, pad_token_id=PAD)


def _rows_until_eos(output: torch.Tensor, prompt_width: int) -> list[list[int]]:
    rows = []
    for row in output[:, prompt_width:].tolist():
        rows.append(row[: row.index(EOS) + 1] if EOS in row else row)
    return rows


def test_propose_follows_the_draft_through_an_edit():
    draft = [5, 6, 7, 8, 9, EOS]
    assert propose([], draft, 0, 3) == ([5, 6, 7], 0)  # nothing generated: the draft's start
    assert propose([5, 6], draft, 1, 3) == ([7, 8, 9], 2)  # copying: the tokens after the matching bigram
    assert propose([5, 6, 4], draft, 2, 3) == ([8, 9, EOS], 3)  # 4 replaced the draft's 7: go on after it
    assert propose([5, 6, 4, 4], draft, 3, 3) == ([9, EOS], 4)  # no bigram matches: still after the pointer
    assert propose([5, 6, 4, 7, 8], draft, 3, 3) == ([9, EOS], 4)  # an insertion: the bigram (7, 8) re-aligns
    assert propose([5, 6, 8], draft, 2, 3) == ([9, EOS], 4)  # the draft's 7 dropped: go on after its 8
    repeated = [5, 6, 5, 6, 9]
    assert propose([5, 6, 5, 6], repeated, 4, 2) == ([9], 4)  # a repeated n-gram: the match at or after the pointer
    assert propose([5, 6], draft, 0, 0) == ([], 0)
    assert propose([5, 6, 7, 8, 9, 3], draft, 5, 3) == ([], 6)  # past the draft's end: nothing left to propose


@pytest.mark.parametrize("use_cache_prefix", [False, True])
def test_greedy_rewrites_are_token_for_token_plain_generation(use_cache_prefix):
    model = _model()
    prompts = [[3, 4, 5, 6], [7, 8], [2, 9, 10, 11, 3], [4]]
    ids, mask = _left_padded(prompts)
    config = _greedy(12)
    plain = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    plain_rows = _rows_until_eos(plain, ids.size(1))
    # Drafts: the exact answer (everything accepted), an edited one, an unrelated one, none at all.
    edited = list(plain_rows[1])
    edited[len(edited) // 2] = (edited[len(edited) // 2] + 1) % VOCAB
    drafts = [plain_rows[0], edited, [9, 9, 9, 9], []]
    cache = None
    if use_cache_prefix:  # as the next-turn format continues the drafts' cache: all but the last columns cached
        cache = DynamicCache(config=model.config)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], cache=cache)
    stats = SpeculationStats()
    output = speculative_generate(model, ids, mask, drafts, config, [EOS], cache=cache, stats=stats)
    assert _rows_until_eos(output, ids.size(1)) == plain_rows
    assert torch.equal(output[:, : ids.size(1)], ids)
    assert stats.accepted >= len(plain_rows[0]) // 2  # the exact draft: most of it accepted
    # The loop runs as long as its slowest row; alone, the row whose draft is its answer takes a few passes.
    alone = SpeculationStats()
    speculative_generate(model, ids[:1], mask[:1], drafts[:1], config, [EOS], stats=alone)
    assert alone.forwards <= 1 + math.ceil(len(plain_rows[0]) / 8) + 1 < len(plain_rows[0]), alone


def test_rows_accepting_different_numbers_of_tokens_share_one_cache():
    """Row 0 copies its draft (long accepted runs), row 1 gets a wrong draft (none accepted): both stay exact."""
    model = _model(seed=1)
    ids, mask = _left_padded([[3, 4, 5], [6, 7, 8]])
    config = _greedy(16)
    plain_rows = _rows_until_eos(model.generate(input_ids=ids, attention_mask=mask, generation_config=config), 3)
    wrong = [(token + 1) % VOCAB or 2 for token in plain_rows[1]]
    stats = SpeculationStats()
    output = speculative_generate(model, ids, mask, [plain_rows[0], wrong], config, [EOS], stats=stats)
    assert _rows_until_eos(output, 3) == plain_rows
    assert 0 < stats.accepted < stats.generated


def test_verify_keeps_each_token_with_its_model_probability():
    """One position, a point-mass proposal: the kept token is distributed as p, whatever the proposal (many rows of
    one batch, each deciding on its own)."""
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    generator = torch.Generator().manual_seed(0)
    draws = 20000
    for proposal in (0, 3):
        decisions = verify(p.expand(draws, 2, 4), [[proposal]] * draws, do_sample=True, generator=generator)
        counts = torch.zeros(4)
        for kept, accepted in decisions:
            counts[kept[0]] += 1
            assert (accepted == 1) == (kept[0] == proposal) and len(kept) == 1 + accepted
        _assert_matches(counts, p, draws)


def _assert_matches(counts: torch.Tensor, expected: torch.Tensor, draws: int) -> None:
    """Pearson's chi-square against ``expected``, at the 0.999 quantile (Wilson-Hilferty): fails 1 run in 1000 by
    chance if the distributions agree, and every run if they differ by a few percent."""
    statistic = float(((counts - draws * expected) ** 2 / (draws * expected)).sum())
    df = len(expected) - 1
    z = 3.090  # the standard normal's 0.999 quantile
    threshold = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    assert statistic < threshold, (statistic, threshold, counts.tolist(), (draws * expected).tolist())


def test_sampled_rewrites_follow_the_exact_distribution_of_plain_sampling():
    """The first two tokens from a tiny model (6 tokens): the empirical distribution of the pairs of many speculated
    samples (the second token proposed from the draft) against the exact one computed from the model's logits."""
    vocab = 6
    model = _model(seed=2, vocab=vocab)
    with torch.no_grad():
        model.lm_head.weight.div_(20)  # flatter: every pair has a probability worth testing
    prompt = torch.tensor([[3, 4, 5]])
    config = GenerationConfig(
        do_sample=True, temperature=0.8, top_k=0, top_p=1.0, max_new_tokens=3, eos_token_id=EOS, pad_token_id=PAD
    )
    with torch.no_grad():  # exact: p(a) p(b | a), through the same temperature
        first = torch.softmax(model(prompt).logits[0, -1] / 0.8, -1)
        pairs = torch.cat((prompt.repeat(vocab, 1), torch.arange(vocab).unsqueeze(1)), dim=1)
        second = torch.softmax(model(pairs).logits[:, -1] / 0.8, -1)
    exact = first.unsqueeze(1) * second
    exact[EOS] = 0  # a row that ends on EOS has no second token: its mass stays on the first
    exact[EOS, 0] = first[EOS]
    rows = 12000
    torch.manual_seed(0)
    draft = [0, 2, 3, 4, 5, 3]  # every first token but EOS is in it: its next one is proposed, accepted or not
    output = speculative_generate(
        model, prompt.repeat(rows, 1), torch.ones(rows, 3, dtype=torch.long), [draft] * rows, config, [EOS]
    )
    counts = torch.zeros(vocab, vocab)
    for a, b in output[:, 3:5].tolist():
        counts[a, b if a != EOS else 0] += 1
    keep = exact.flatten() > 0
    _assert_matches(counts.flatten()[keep], exact.flatten()[keep], rows)


def test_settings_that_change_the_distribution_are_refused():
    assert unsupported_settings(GenerationConfig(do_sample=True, temperature=0.7, top_p=0.9)) == []
    assert unsupported_settings(GenerationConfig(repetition_penalty=1.2)) == ["repetition_penalty=1.2"]
    with pytest.raises(ValueError, match="repetition_penalty"):
        ids = torch.tensor([[3, 4]])
        config = GenerationConfig(max_new_tokens=2, repetition_penalty=1.2, eos_token_id=EOS, pad_token_id=PAD)
        speculative_generate(_model(), ids, torch.ones_like(ids), [[5]], config, [EOS])


# ------------------------------------------------------------------------- in the trainer, on the shipped checkpoint


def _toy_trainer(tmp_path, **overrides):
    """The shipped toy checkpoint on its own prompts, greedy improver (so rewrites compare token for token)."""
    from trl_sgpo import SGPOTrainer
    from trl_sgpo.toy import load_toy_model, make_dataset

    from .helpers import make_config

    model, tokenizer = load_toy_model()
    settings = dict(
        improver_format="next_turn",
        improver_instruction="improve",
        per_device_train_batch_size=8,
        max_new_tokens=16,
        max_length=256,
        improver_temperature=0.0,
        generation_kwargs={},
        improver_speculative_tokens=6,
    )
    settings.update(overrides)
    return SGPOTrainer(
        model=model,
        args=make_config(tmp_path, **settings),
        train_dataset=make_dataset("plain", "train", 16, seed=0),
        processing_class=tokenizer,
    )


@pytest.mark.parametrize("improver_format", ["next_turn", "template"])
def test_speculated_rewrites_in_the_trainer_equal_plain_ones(tmp_path, improver_format):
    """The sampler's improver call, speculation on and off, on the same drafts: the same greedy rewrites (next turn:
    on the drafts' KV cache; template: from the rows), with a share of the rewrite tokens taken from the drafts."""
    extra = {} if improver_format == "next_turn" else {"improver_template": "{prompt}\ndraft: {response}\nfix:"}
    trainer = _toy_trainer(tmp_path, improver_format=improver_format, **extra)
    model = trainer.model.eval()
    rewrites = {}
    for speculative_tokens in (0, 6):
        trainer.sampler.speculative_tokens = speculative_tokens
        torch.manual_seed(0)
        batch = trainer.draft(model, trainer.train_dataset[:8], keep_cache=improver_format == "next_turn")
        prompts = trainer.layout.improver_prompts(batch)
        if batch.draft_cache is not None:
            ids, mask = prompts.generation_ids, prompts.generation_mask
        else:
            ids, mask = prompts.ids, prompts.mask
        speculation = SpeculationStats()
        chosen = trainer.sampler(
            model, ids, mask, "improver", cache=batch.draft_cache, drafts=batch.drafts, speculation=speculation
        )
        rewrites[speculative_tokens] = [(c.token_ids, c.ended) for c in chosen]
    assert improver_format == "template" or batch.draft_cache is not None
    assert rewrites[6] == rewrites[0]
    assert any(tokens for tokens, _ in rewrites[0])
    # the toy's rewrites are ~5 tokens that mostly change the first one: about half is taken from the draft
    assert speculation.accepted_share > 0.3, speculation
    # plain generation: one pass per token of the longest rewrite (its EOS included); never more here
    assert speculation.forwards <= max(len(tokens) + 1 for tokens, _ in rewrites[0]), speculation


def test_training_with_speculation_logs_the_share_taken_from_the_drafts(tmp_path):
    trainer = _toy_trainer(tmp_path, improver_warmup_steps=0, improver_steps=0, dpo_steps=1, improver_temperature=1.0)
    trainer.train()
    shares = [
        log["sgpo/rewrite_tokens_from_draft"]
        for log in trainer.state.log_history
        if "sgpo/rewrite_tokens_from_draft" in log
    ]
    assert shares and all(0 <= share <= 1 for share in shares) and max(shares) > 0


def test_bad_speculation_settings_fail_when_the_config_is_built(tmp_path):
    from .helpers import make_config

    with pytest.raises(ValueError, match="improver_speculative_tokens must be >= 0"):
        make_config(tmp_path, improver_speculative_tokens=-1)
    with pytest.raises(ValueError, match="improver_speculative_tokens cannot reproduce"):
        _toy_trainer(tmp_path, generation_kwargs={"repetition_penalty": 1.3})
