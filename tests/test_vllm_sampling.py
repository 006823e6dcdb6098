"""The trainer's vLLM sampling, through TRL's real `VLLMGeneration`, against stand-ins for what vLLM provides (it
cannot be installed here): vLLM's `LLM` and `SamplingParams` (colocate, with and without sleep mode) and TRL's
`VLLMClient` (server). The stand-ins record what they are called with.

Checked: the trainer builds one engine (TRL's online DPO trainer builds none of its own); prompts go as token ids
(the improver's next-turn rows exactly as laid out, no text round trip); each role's settings reach the engine for
its call only (the improver's length, greedy for evaluation, the stop ids with the chat template's end of turn);
the policy's and the improver's calls of one step share one weight sync, except in sleep mode, where level 2
discards the weights after each call and `VLLMGeneration` pushes them again.
"""

from types import SimpleNamespace

import pytest
import torch
from trl.generation import vllm_generation

from trl_sgpo import SGPOTrainer, config_checks
from trl_sgpo.method.schedule import DPO

from .helpers import conversational_dataset, make_config, tiny_model


class RecordingLLM:
    """Stands in for `vllm.LLM`: records its construction, weight loads, sleeps and calls; answers every prompt with
    a fixed completion ending with the EOS."""

    answer: list[int] = []
    built: list["RecordingLLM"] = []

    def __init__(self, **kwargs):
        self.kwargs, self.calls, self.loaded = kwargs, [], []
        model = SimpleNamespace(load_weights=lambda weights: self.loaded.extend(name for name, _ in weights))
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=SimpleNamespace(model=model)))
        )
        RecordingLLM.built.append(self)

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags):
        self.calls.append(("wake_up", tuple(tags)))

    def reset_prefix_cache(self):  # the last thing `VLLMGeneration.sync_weights` does
        self.calls.append(("synced",))

    def generate(self, requests, sampling_params, use_tqdm=False):
        self.calls.append(("generate", [request["prompt_token_ids"] for request in requests], sampling_params))
        return [
            SimpleNamespace(
                prompt_token_ids=request["prompt_token_ids"],
                outputs=[SimpleNamespace(token_ids=list(self.answer), logprobs=None)],
            )
            for request in requests
        ]


class RecordingClient:
    """Stands in for TRL's `VLLMClient` (server mode)."""

    answer: list[int] = []
    built: list["RecordingClient"] = []

    def __init__(self, **kwargs):
        self.kwargs, self.calls, self.synced = kwargs, [], 0
        RecordingClient.built.append(self)

    def init_communicator(self, device):
        pass

    def update_named_params(self, metadata, params):
        list(params)  # consumes the gathered parameters, as the real client streams them
        self.synced += 1

    def reset_prefix_cache(self):
        pass

    def generate(self, prompts, features=None, **kwargs):
        self.calls.append((prompts, kwargs))
        return {
            "prompt_ids": prompts,
            "completion_ids": [list(self.answer) for _ in prompts],
            "logprobs": None,
        }


@pytest.fixture
def stand_ins(monkeypatch, tokenizer):
    answer = tokenizer("cba", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    RecordingLLM.answer, RecordingClient.answer = answer, answer
    RecordingLLM.built, RecordingClient.built = [], []
    monkeypatch.setattr(config_checks, "is_vllm_available", lambda: True)
    monkeypatch.setattr(vllm_generation, "is_vllm_available", lambda: True)
    monkeypatch.setattr(vllm_generation, "LLM", RecordingLLM, raising=False)
    monkeypatch.setattr(vllm_generation, "SamplingParams", lambda **settings: settings, raising=False)
    monkeypatch.setattr(vllm_generation, "VLLMClient", RecordingClient)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):  # set by the colocated engine
        monkeypatch.setenv(name, {"MASTER_ADDR": "localhost", "MASTER_PORT": "29555"}.get(name, "0"))
    monkeypatch.setenv("WORLD_SIZE", "1")


def _vllm_trainer(tmp_path, tokenizer, mode: str, sleep_mode: bool = False):
    return SGPOTrainer(
        model=tiny_model(tokenizer),
        args=make_config(
            tmp_path,
            use_vllm=True,
            vllm_mode=mode,
            vllm_enable_sleep_mode=sleep_mode,
            improver_format="next_turn",
            improver_instruction="improve",
            improver_warmup_steps=0,
            improver_steps=0,
            dpo_steps=1,
            improver_max_new_tokens=9,
            generation_kwargs={"seed": 7},
        ),
        train_dataset=conversational_dataset(8),
        processing_class=tokenizer,
    )


def _one_dpo_step(trainer, step: int = 0):
    laid_out, improver_prompts = [], trainer.layout.improver_prompts
    trainer.layout.improver_prompts = lambda batch: laid_out.append(improver_prompts(batch)) or laid_out[-1]
    trainer.state.global_step = step
    trainer.current_gradient_accumulation_steps = 1  # set by `train()`; the step is called on its own here
    assert trainer.phase_callback.phase == DPO
    trainer.training_step(trainer.model, trainer.train_dataset[:4])
    return laid_out[0]


def _rows(prompts) -> list[list[int]]:
    return [row[mask.bool()].tolist() for row, mask in zip(prompts.ids, prompts.mask)]


def test_one_engine_is_built_from_the_config_and_none_by_the_parent(tmp_path, tokenizer, stand_ins):
    trainer = _vllm_trainer(tmp_path, tokenizer, "colocate")
    (engine,) = RecordingLLM.built  # the parent's own engine would be a second one
    assert trainer.vllm_roles.generation.llm is engine and not hasattr(trainer, "llm")
    assert engine.kwargs["model"] == trainer.model.name_or_path
    assert engine.kwargs["max_num_seqs"] == trainer.args.per_device_train_batch_size
    assert trainer.args.use_vllm and trainer.use_vllm and trainer.vllm_mode == "colocate"


@pytest.mark.parametrize("sleep_mode", [False, True])
def test_colocated_vllm_gets_token_ids_and_each_roles_settings(tmp_path, tokenizer, stand_ins, sleep_mode):
    trainer = _vllm_trainer(tmp_path, tokenizer, "colocate", sleep_mode)
    (engine,) = RecordingLLM.built
    engine.calls.clear()
    prompts = _one_dpo_step(trainer)
    calls = [call for call in engine.calls if call[0] == "generate"]
    assert len(calls) == 2  # the policy's drafts, then the improver's rewrites
    policy_texts = trainer.layout.policy_prompt_texts(trainer.train_dataset[:4]["prompt"])
    assert calls[0][1] == [tokenizer(t, add_special_tokens=False)["input_ids"] for t in policy_texts]
    # the improver's rows exactly as laid out (the draft as sampled, with its end of turn), not re-tokenized text
    assert calls[1][1] == _rows(prompts)
    policy, improver = calls[0][2], calls[1][2]
    assert policy["max_tokens"] == trainer.args.max_new_tokens and improver["max_tokens"] == 9
    assert policy["seed"] == 7 and policy["stop_token_ids"] == trainer.eos_token_ids and policy["n"] == 1
    assert trainer.vllm_roles.generation.max_completion_length == trainer.args.max_new_tokens  # restored after
    kinds = [call[1][0] if call[0] == "wake_up" else call[0] for call in engine.calls]
    if sleep_mode:  # level 2 discards the weights after each call: the improver's call needs them pushed again
        assert kinds == ["weights", "synced", "kv_cache", "generate", "sleep"] * 2
    else:  # one sync shared by both calls of the step
        assert kinds == ["synced", "generate", "generate"]
    assert len(engine.loaded) == (2 if sleep_mode else 1) * len(list(trainer.model.named_parameters()))


def test_the_next_step_syncs_again_and_greedy_roles_are_greedy(tmp_path, tokenizer, stand_ins):
    trainer = _vllm_trainer(tmp_path, tokenizer, "colocate")
    (engine,) = RecordingLLM.built
    _one_dpo_step(trainer, step=0)
    _one_dpo_step(trainer, step=1)
    assert [call[0] for call in engine.calls].count("synced") == 2  # once per optimizer step
    ids = torch.tensor([[5, 6, 7]])
    trainer.sampler(trainer.model, ids, torch.ones_like(ids), "eval")
    trainer.sampler(trainer.model, ids, torch.ones_like(ids), "improver_greedy")
    evaluation, improver_greedy = [call[2] for call in engine.calls if call[0] == "generate"][-2:]
    assert evaluation["temperature"] == improver_greedy["temperature"] == 0.0
    assert evaluation["max_tokens"] == trainer.args.max_new_tokens and improver_greedy["max_tokens"] == 9


def test_the_server_client_gets_token_ids_and_the_settings_by_name(tmp_path, tokenizer, stand_ins):
    trainer = _vllm_trainer(tmp_path, tokenizer, "server")
    (client,) = RecordingClient.built
    assert not RecordingLLM.built
    prompts = _one_dpo_step(trainer)
    (policy_prompts, policy_kwargs), (improver_prompts, improver_kwargs) = client.calls
    assert improver_prompts == _rows(prompts)
    assert policy_kwargs["generation_kwargs"] == {"stop_token_ids": trainer.eos_token_ids, "seed": 7}
    assert policy_kwargs["max_tokens"] == trainer.args.max_new_tokens and improver_kwargs["max_tokens"] == 9
    assert policy_kwargs["top_k"] == 0 and policy_kwargs["n"] == 1
    assert client.synced == 1  # one weight sync shared by both calls of the step
