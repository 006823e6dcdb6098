"""Rows exactly as real chat templates render them: SmolLM2's ChatML (a default system prompt), a Qwen2.5-style
ChatML with two end-of-sequence ids, and a Llama-3.1-style header template, all on SmolLM2's tokenizer.

For drafts that end on each end-of-sequence id and drafts cut at the length limit, the improver's next-turn row, the
padded completions and the packed row hold exactly the tokens of ``apply_chat_template`` of the same conversation;
the end-of-turn token comes from the template, not from ``eos_token``. Needs only the tokenizer (the `smollm2_dir`
fixture).
"""

import copy

import pytest
import torch

from trl_sgpo.method.improver import end_of_turn_token
from trl_sgpo.records import Completion, DraftBatch
from trl_sgpo.step.layout import PromptLayout
from trl_sgpo.step.sampling import DraftCache
from trl_sgpo.step.scoring import Scorer

from .helpers import padded_ids


INSTRUCTION = "Improve the answer."
QWEN_STYLE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message['role'] != 'system' %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3_STYLE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + "
    "'<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
LLAMA3_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"]


def _smollm2(folder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return tokenizer, [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def _qwen_style(folder):
    """ChatML with a default system prompt; eos_token <|endoftext|> (as a base tokenizer's), and generation stops
    on <|im_end|> or <|endoftext|>."""
    tokenizer, _ = _smollm2(folder)
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = QWEN_STYLE
    tokenizer.eos_token = "<|endoftext|>"
    return tokenizer, tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])


def _llama3_style(folder):
    """Header turns ending with <|eot_id|>; eos_token <|end_of_text|> (the original Llama-3-Instruct config), and
    generation stops on <|eot_id|>, <|eom_id|> or <|end_of_text|>."""
    tokenizer, _ = _smollm2(folder)
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": LLAMA3_TOKENS + ["<|end_of_text|>"]})
    tokenizer.chat_template = LLAMA3_STYLE
    tokenizer.bos_token, tokenizer.eos_token = "<|begin_of_text|>", "<|end_of_text|>"
    return tokenizer, tokenizer.convert_tokens_to_ids(["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"])


TEMPLATES = {"smollm2": _smollm2, "qwen2.5-style": _qwen_style, "llama3.1-style": _llama3_style}
END_OF_TURN = {"smollm2": "<|im_end|>", "qwen2.5-style": "<|im_end|>", "llama3.1-style": "<|eot_id|>"}


def _layout(tokenizer) -> PromptLayout:
    """The step's prompt layout for the next-turn format, built from the tokenizer alone."""
    end_of_turn = end_of_turn_token(tokenizer, conversational=True)
    cpu = torch.device("cpu")
    return PromptLayout(tokenizer, "next_turn", None, INSTRUCTION, end_of_turn, tokenizer.pad_token_id, cpu)


def _prompts():
    return [
        [{"role": "user", "content": "What is 12 + 30?"}],
        [{"role": "system", "content": "Answer with a number."}, {"role": "user", "content": "And 7 + 5?"}],
        [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another one?"},
        ],
    ]


def _batch(layout, drafts):
    prompts = _prompts()[: len(drafts)]
    texts = layout.policy_prompt_texts(prompts)
    ids, mask = layout.tokenize_prompts(texts)
    reference_texts = ["42", "12", "Red."][: len(drafts)]
    references = [layout.reference_completion(text) for text in reference_texts]
    return DraftBatch(
        prompts=prompts,
        prompt_texts=texts,
        prompt_ids=ids,
        prompt_mask=mask,
        drafts=drafts,
        reference_texts=reference_texts,
        references=references,
        reference_tokens=layout.pad(references),
        rows={"prompt": prompts},
    )


def _rendered(tokenizer, prompt, draft_text):
    conversation = [*prompt, {"role": "assistant", "content": draft_text}, {"role": "user", "content": INSTRUCTION}]
    return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_the_end_of_turn_token_comes_from_the_template(smollm2_dir, template):
    tokenizer, _ = TEMPLATES[template](smollm2_dir)
    end_of_turn = end_of_turn_token(tokenizer, conversational=True)
    assert tokenizer.convert_ids_to_tokens(end_of_turn) == END_OF_TURN[template]
    if template != "smollm2":  # here eos_token is not the end of a turn
        assert end_of_turn != tokenizer.eos_token_id
    assert end_of_turn_token(tokenizer, conversational=False) == tokenizer.eos_token_id  # plain-text prompts


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_next_turn_rows_are_the_templates_tokens_for_every_ending(smollm2_dir, template):
    tokenizer, eos_token_ids = TEMPLATES[template](smollm2_dir)
    layout = _layout(tokenizer)
    end_of_turn = layout.end_of_turn
    content = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in ("It is 42.", "12", "Green")]
    # every end-of-sequence id the model may sample, and a draft cut at the length limit
    endings = [(True, eos) for eos in eos_token_ids] + [(False, None)]
    for ended, end_token in endings:
        drafts = [Completion.from_generated(ids + ([end_token] if ended else []), eos_token_ids) for ids in content]
        assert all(d.ended == ended for d in drafts)
        batch = _batch(layout, drafts)
        prompts = layout.next_turn_prompts(batch)
        for row in range(len(drafts)):
            tokens = prompts.ids[row][prompts.mask[row].bool()].tolist()
            draft_text = tokenizer.decode(drafts[row].token_ids)
            rendered = _rendered(tokenizer, batch.prompts[row], draft_text)
            where = (template, tokenizer.convert_ids_to_tokens(end_token) if ended else "cut", row)
            # the text is the template's, character for character
            assert tokenizer.decode(tokens) == rendered, where
            # the tokens: the policy's prompt as the policy saw it, the draft as sampled (its end as the template's
            # end of turn), then the template's text after the draft
            policy_text = batch.prompt_texts[row]
            after_text = rendered[len(policy_text) + len(draft_text) :]
            assert tokens == _ids(tokenizer, policy_text) + drafts[row].token_ids + _ids(tokenizer, after_text), where
            if template != "llama3.1-style":
                # ChatML: also the tokenization of the whole rendered text. (The Llama-style template on SmolLM2's
                # GPT-2-style pre-tokenizer tokenizes the "\n\n" before the answer as one token at the end of the
                # prompt but as two before text: the row keeps what the policy saw.)
                assert tokens == _ids(tokenizer, rendered), where
            # the draft's span inside the row: its content and, if it ended, the template's end of turn
            start = len(tokens) - prompts.after_lengths[row] - prompts.rejected_lengths[row]
            span = tokens[start : start + prompts.rejected_lengths[row]]
            assert span == drafts[row].token_ids + ([end_of_turn] if ended else [])
        # the padded completions the DPO loss scores: the same span
        ids, mask = padded_ids(layout, drafts)
        for row, draft in enumerate(drafts):
            assert ids[row][mask[row].bool()].tolist() == draft.token_ids + ([end_of_turn] if ended else [])


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_packed_rows_hold_the_policy_prompt_then_each_branch_as_rendered(smollm2_dir, template):
    """``[x | chosen | rejected]``: each branch after the prompt is the assistant turn the template writes."""
    tokenizer, eos_token_ids = TEMPLATES[template](smollm2_dir)
    layout = _layout(tokenizer)
    end_of_turn = layout.end_of_turn
    prompt = _prompts()[1]
    texts = layout.policy_prompt_texts([prompt])
    ids, mask = layout.tokenize_prompts(texts)
    chosen = layout.reference_completion("12")
    rejected = Completion.from_generated(
        tokenizer("13", add_special_tokens=False)["input_ids"] + [eos_token_ids[-1]], eos_token_ids
    )
    branches = [[layout.completion_tokens(chosen)], [layout.completion_tokens(rejected)]]
    scorer = Scorer(1024, tokenizer.pad_token_id, torch.device("cpu"), unwrap=lambda model: model)
    packed = scorer.pack(ids, mask, branches)
    row = packed.input_ids[0].tolist()
    for branch, answer in zip(range(2), ("12", "13")):
        start = packed.prompt_width + int(packed.starts[0, branch])
        tokens = row[start : start + int(packed.lengths[0, branch])]
        full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": answer}], tokenize=False)
        assert full.startswith(texts[0])  # the rendered conversation continues the policy prompt
        # the branch: the answer's tokens, then the first token the template writes after it (its end of turn)
        after = _ids(tokenizer, full[len(texts[0]) + len(answer) :])
        assert tokens == _ids(tokenizer, answer) + after[:1]
        assert tokens[-1] == end_of_turn


def test_the_drafts_cache_is_not_continued_after_another_end_of_sequence_id(smollm2_dir):
    """A Qwen-style draft that stopped on <|endoftext|> holds that token in the cache where the rendered conversation
    has <|im_end|>: that step's rewrite is generated from the rows, not from the cache."""
    tokenizer, eos_token_ids = _qwen_style(smollm2_dir)
    layout = _layout(tokenizer)
    content = _ids(tokenizer, "It is 42.")
    for end_token, continues in ((eos_token_ids[0], True), (eos_token_ids[1], False)):
        drafts = [Completion.from_generated(content + [end_token], eos_token_ids)]
        batch = _batch(layout, drafts)
        generated = torch.tensor([content + [end_token]])
        batch.draft_cache = DraftCache(None, generated, torch.ones_like(generated))
        prompts = layout.next_turn_prompts(batch)
        assert (prompts.generation_ids is not None) == continues, tokenizer.convert_ids_to_tokens(end_token)
