"""The real benchmark's evaluation: sampling several answers from one prefill of each prompt."""

import torch

from benchmarks.real.evaluation import generate_from_shared_prompts


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def test_a_shared_prefill_generates_what_plain_generation_does_for_left_padded_prompts():
    model = _tiny_llama()
    torch.manual_seed(1)
    input_ids = torch.randint(3, 64, (3, 7))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :3] = 0  # left padding of different widths
    attention_mask[1, :1] = 0
    input_ids[attention_mask == 0] = 0
    settings = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0, "eos_token_id": 1}
    repeated = {
        "input_ids": input_ids.repeat_interleave(3, 0),
        "attention_mask": attention_mask.repeat_interleave(3, 0),
    }
    plain = model.generate(**repeated, **settings)
    shared = generate_from_shared_prompts(model, input_ids, attention_mask, 3, **settings)
    assert torch.equal(shared, plain)
    # Sampling: the same seed draws the same tokens as `num_return_sequences`, which expands the rows the same way.
    sampled = {**settings, "do_sample": True, "temperature": 1.0, "top_k": 0}
    torch.manual_seed(2)
    plain = model.generate(input_ids=input_ids, attention_mask=attention_mask, num_return_sequences=3, **sampled)
    torch.manual_seed(2)
    assert torch.equal(generate_from_shared_prompts(model, input_ids, attention_mask, 3, **sampled), plain)
    # The test can tell: attending to the padding (no attention mask) changes the padded rows' continuations.
    unpositioned = model.generate(
        input_ids=input_ids.repeat_interleave(3, 0),
        attention_mask=torch.ones_like(input_ids).repeat_interleave(3, 0),
        **settings,
    )
    assert not torch.equal(unpositioned[:3], plain[:3])
