"""The trainer's side of vLLM sampling, against stand-ins that record what they are called with (vLLM cannot be
installed here): a colocated engine (with and without sleep mode) and a server client.

Checked: prompts go as token ids (the improver's next-turn rows exactly as laid out, no text round trip); the
policy's and the improver's calls of one step share one weight push, except in sleep mode, where level 2 discards
the weights after each call and they are pushed again; the server client gets its own parameters by name and the
rest as ``generation_kwargs``.
"""

from types import SimpleNamespace

import pytest

from trl_sgpo import SGPOTrainer, sampling
from trl_sgpo.sampling import Sampler
from trl_sgpo.schedule import DPO

from .helpers import conversational_dataset, make_config, tiny_model


class RecordingEngine:
    """Stands in for a colocated `vllm.LLM`: answers every prompt with a fixed completion and the EOS."""

    def __init__(self, answer: list[int]):
        self.answer, self.calls = answer, []

    def wake_up(self, tags):
        self.calls.append(("wake_up", tuple(tags)))

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def generate(self, requests, params, use_tqdm=False):
        self.calls.append(("generate", [request["prompt_token_ids"] for request in requests], params))
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=list(self.answer))]) for _ in requests]


class RecordingClient:
    """Stands in for TRL's `VLLMClient` (server mode)."""

    def __init__(self, answer: list[int]):
        self.answer, self.calls = answer, []

    def generate(self, prompts, **kwargs):
        self.calls.append((prompts, kwargs))
        return {"completion_ids": [list(self.answer) for _ in prompts]}


def _vllm_trainer(tmp_path, tokenizer, monkeypatch, mode: str, sleep_mode: bool = False):
    trainer = SGPOTrainer(
        model=tiny_model(tokenizer),
        args=make_config(
            tmp_path,
            improver_format="next_turn",
            improver_instruction="improve",
            improver_warmup_steps=0,
            improver_steps=0,
            dpo_steps=1,
            generation_kwargs={"seed": 7},
        ),
        train_dataset=conversational_dataset(8),
        processing_class=tokenizer,
    )
    answer = tokenizer("cba", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    trainer.use_vllm, trainer.vllm_mode = True, mode
    trainer.args.vllm_enable_sleep_mode = sleep_mode
    trainer.llm, trainer.vllm_client = RecordingEngine(answer), RecordingClient(answer)
    pushes = []
    trainer._move_model_to_vllm = lambda: pushes.append(trainer.state.global_step)  # upstream's weight push
    trainer._last_loaded_step = -1
    monkeypatch.setattr(sampling, "vllm_sampling_params", lambda **settings: settings)
    trainer.sampler = Sampler(trainer)  # built again: its vLLM settings are read when it is built
    return trainer, pushes


def _one_dpo_step(trainer):
    laid_out, improver_prompts = [], trainer.layout.improver_prompts
    trainer.layout.improver_prompts = lambda batch: laid_out.append(improver_prompts(batch)) or laid_out[-1]
    trainer.state.global_step = 0
    trainer.current_gradient_accumulation_steps = 1  # set by `train()`; the step is called on its own here
    assert trainer.phase_callback.phase == DPO
    trainer.training_step(trainer.model, trainer.train_dataset[:4])
    return laid_out[0]


@pytest.mark.parametrize("sleep_mode", [False, True])
def test_colocated_vllm_gets_token_ids_and_one_weight_push_per_step(tmp_path, tokenizer, monkeypatch, sleep_mode):
    trainer, pushes = _vllm_trainer(tmp_path, tokenizer, monkeypatch, "colocate", sleep_mode)
    prompts = _one_dpo_step(trainer)
    calls = [call for call in trainer.llm.calls if call[0] == "generate"]
    assert len(calls) == 2  # the policy's drafts, then the improver's rewrites
    policy_texts = trainer.layout.policy_prompt_texts(trainer.train_dataset[:4]["prompt"])
    assert calls[0][1] == [tokenizer(t, add_special_tokens=False)["input_ids"] for t in policy_texts]
    # the improver's rows exactly as laid out (the draft as sampled, with its EOS), not re-tokenized text
    assert calls[1][1] == [row[mask.bool()].tolist() for row, mask in zip(prompts.ids, prompts.mask)]
    assert calls[0][2]["seed"] == 7 and calls[1][2]["max_tokens"] == trainer.sampler.improver_max_new_tokens
    if sleep_mode:  # level 2 discards the weights after each call: the improver's call needs them pushed again
        assert pushes == [0, 0]
        kinds = [call[0] if call[0] != "wake_up" else call[1][0] for call in trainer.llm.calls]
        assert kinds == ["weights", "kv_cache", "generate", "sleep"] * 2
    else:
        assert pushes == [0]  # one push shared by both calls of the step
        assert not [call for call in trainer.llm.calls if call[0] != "generate"]


def test_the_server_client_gets_its_parameters_by_name_and_the_rest_as_generation_kwargs(
    tmp_path, tokenizer, monkeypatch
):
    trainer, pushes = _vllm_trainer(tmp_path, tokenizer, monkeypatch, "server")
    prompts = _one_dpo_step(trainer)
    (policy_prompts, policy_kwargs), (improver_prompts, improver_kwargs) = trainer.vllm_client.calls
    assert improver_prompts == [row[mask.bool()].tolist() for row, mask in zip(prompts.ids, prompts.mask)]
    assert policy_kwargs["generation_kwargs"] == {"seed": 7} and "seed" not in policy_kwargs
    assert "detokenize" not in policy_kwargs and policy_kwargs["top_k"] == 0
    assert improver_kwargs["max_tokens"] == trainer.sampler.improver_max_new_tokens
    assert pushes == [0]
