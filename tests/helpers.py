"""Deterministic stand-ins for sampling, so that tests can compare runs whose batches are split differently."""

import re

import torch
from trl.data_utils import maybe_apply_chat_template

from trl_sgpo.pairs import Completion


WORD = re.compile(r"reverse (\w+)")


def rule_completion(text: str, role: str) -> str:
    """The policy writes the reversed word with a stray 'x'; the improver writes it right."""
    word = WORD.findall(text)[0]
    return word[::-1] + ("x" if role == "policy" else "")


def rule_sampler(tokenizer):
    """A drop-in for `SGPOTrainer._sample` that depends on each text alone, never on the batch."""

    def sample(model, texts, prompt_ids, prompt_mask, role):
        return [
            Completion(tokenizer(rule_completion(text, role), add_special_tokens=False)["input_ids"], ended=True)
            for text in texts
        ]

    return sample


def rule_generate_for_online_dpo(trainer):
    """A drop-in for upstream `OnlineDPOTrainer._generate` giving two fixed completions per prompt."""
    tokenizer = trainer.processing_class

    def generate(model, prompts, images=None):
        texts = [maybe_apply_chat_template({"prompt": prompt}, tokenizer)["prompt"] for prompt in prompts]
        batch = tokenizer(text=texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        completions = [rule_completion(t, "improver") for t in texts] + [rule_completion(t, "policy") for t in texts]
        ids = [tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for c in completions]
        width = max(map(len, ids))
        completion_ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in ids])
        completion_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
        return (
            batch["input_ids"].repeat(2, 1),
            batch["attention_mask"].repeat(2, 1),
            completion_ids,
            completion_mask,
            None,
        )

    return generate


def reward_length(completions, **kwargs):
    """A cheap reward for upstream OnlineDPOTrainer: shorter is better."""
    return [-float(len(str(completion))) for completion in completions]
