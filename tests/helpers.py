"""Test factories (tiny models, datasets, configs) and deterministic stand-ins for sampling.

The stand-ins let tests compare runs whose batches are split differently. Fixtures are in `conftest.py`.
"""

import re

import torch
from datasets import Dataset
from trl.data_utils import maybe_apply_chat_template

from trl_sgpo import SGPOConfig
from trl_sgpo.records import Completion
from trl_sgpo.toy import build_tiny_model
from trl_sgpo.toy.tokenizer import SPECIAL_TOKENS


WORD = re.compile(r"reverse (\w+)")


def rule_completion(text: str, role: str) -> str:
    """The policy writes the reversed word with a stray 'x'; the improver writes it right."""
    word = WORD.findall(text)[0]
    return word[::-1] + ("x" if role == "policy" else "")


def prompt_texts(tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[str]:
    """The text of each row of a (left-padded) prompt block, as a sampler stand-in reads it."""
    return [tokenizer.decode(row[mask.bool()].tolist()) for row, mask in zip(prompt_ids, prompt_mask)]


def padded_ids(layout, completions) -> tuple[torch.Tensor, torch.Tensor]:
    """The ids and mask of completions as the step scores them (`PromptLayout.pad`)."""
    padded = layout.pad(completions)
    return padded.ids, padded.mask


def rule_sampler(tokenizer):
    """A stand-in for `SGPOTrainer.sampler` that depends on each text alone, never on the batch."""

    def sample(model, prompt_ids, prompt_mask, role, cache=None, **kwargs):
        texts = prompt_texts(tokenizer, prompt_ids, prompt_mask)
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


WORDS = ["abc", "hello", "world", "qwerty", "zyx", "mnop", "abcd", "xyz", "lemon", "kiwi", "grape", "plum"]
SHORT_TEMPLATE = "{prompt}\ndraft: {response}\nfix:"


def tiny_model(tokenizer, seed: int = 0):
    return build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=seed)


def conversational_dataset(num_rows: int = 8) -> Dataset:
    words = [WORDS[i % len(WORDS)] for i in range(num_rows)]
    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": f"reverse {word}"}],
                "completion": [{"role": "assistant", "content": word[::-1]}],
            }
            for word in words
        ]
    )


def standard_dataset(num_rows: int = 8) -> Dataset:
    words = [WORDS[i % len(WORDS)] for i in range(num_rows)]
    return Dataset.from_list([{"prompt": f"reverse {word} =", "completion": f" {word[::-1]}"} for word in words])


def make_config(tmp_path, **overrides) -> SGPOConfig:
    """A CPU config for a few fast steps; every completion ends with EOS (forced at the length limit)."""
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=4,
        # Tests set their schedule: alternate from the first step, so a few steps visit both phases. The default
        # schedule (a short Step 1, then DPO steps only) has its own test in test_method.py.
        improver_warmup_steps=0,
        improver_steps=1,
        logging_steps=1,
        max_new_tokens=6,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        improver_format="template",  # tests that exercise the next turn (or "auto") ask for it
        # Tests keep every pair the filter keeps and train toward the reference, so that a step's pairs and targets
        # are those the stand-in samplers write; the gate and keep_plausible targets have tests of their own.
        pair_gate="none",
        improver_target="reference",
        improver_template=SHORT_TEMPLATE,
        generation_kwargs={"forced_eos_token_id": SPECIAL_TOKENS.index("</s>")},
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,  # no progress bars left open by tests that stop training on purpose
    )
    settings.update(overrides)
    return SGPOConfig(**settings)


# How far two float32 computations of the same gradient may part when only the order of their sums differs (a batch
# split in two, a loss summed before or after backward). Reassociating a sum of n terms moves it by at most
# (n - 1) * u * sum(|x_i|) (Higham, Accuracy and Stability of Numerical Algorithms, 4.2), u = 2**-24; the longest
# reductions of the tiny test models (a dot product over a few hundred features per layer, a batch mean over a few
# thousand tokens) give a worst case of ~3.6e3 * u ~ 2e-4. A real defect moves a gradient by a sizeable fraction of
# itself (a sum instead of a mean: 100%). Compared in relative norm per tensor: one element's rounding can cancel.
FLOAT32_REASSOCIATION_RTOL = 2e-4


def assert_gradients_close(actual: dict, expected: dict, rtol: float = FLOAT32_REASSOCIATION_RTOL) -> None:
    """Each tensor of ``actual`` within ``rtol`` of ``expected`` in relative norm (see FLOAT32_REASSOCIATION_RTOL)."""
    assert actual.keys() == expected.keys()
    total = torch.stack([value.norm() for value in expected.values()]).norm()
    for name, value in expected.items():
        difference = (actual[name] - value).norm()
        # tensors whose gradient is ~0 are held to the scale of the whole gradient instead
        assert difference <= rtol * max(value.norm(), 1e-3 * total), f"{name}: relative {difference / total:.2e}"
