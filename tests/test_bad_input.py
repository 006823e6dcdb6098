"""Bad input gets a clear error naming the problem and the fix, raised before any model work or generation.

Two tables. `CASES`: each case builds a config and/or a trainer from a bad ingredient and asserts the error type and
a fragment of the message (the problem) and, where there is one, a fragment of the suggested fix. `CLI_CASES`: each
runs the command line (`trl_sgpo.cli.main`) with options that cannot work, and asserts the same before any model is
loaded (loading one fails the test).
"""

import importlib.util
import json

import pytest
from datasets import Dataset

from trl_sgpo import SGPOConfig, SGPOTrainer
from trl_sgpo.cli import command as cli
from trl_sgpo.toy import build_char_tokenizer

from .helpers import conversational_dataset, make_config, tiny_model


def chat(user: str = "reverse abc", answer: str = "cba", user_role: str = "user", answer_role: str = "assistant"):
    return {"prompt": [{"role": user_role, "content": user}], "completion": [{"role": answer_role, "content": answer}]}


def no_reward(**kwargs):
    return [0.0]


def messages_template(prompt, response):
    """A callable improver template that returns messages (needs a tokenizer with a chat template)."""
    return [{"role": "user", "content": f"{prompt}\ndraft: {response}\nfix:"}]


def turn(role: str, content: str = "x") -> dict:
    return {"role": role, "content": content}


CASES = {
    # data: columns, types, emptiness, roles, lengths
    "missing completion column": (dict(rows=[{"prompt": "a"}]), ValueError, "no 'completion' column", "Rename"),
    "missing prompt column": (dict(rows=[{"question": "a", "completion": "b"}]), ValueError, "no 'prompt'", "Rename"),
    "empty prompt": (dict(rows=[{"prompt": " ", "completion": "b"}]), ValueError, "the prompt is empty", "Remove"),
    "empty reference": (dict(rows=[{"prompt": "a", "completion": ""}]), ValueError, "is empty", "Remove or fill"),
    "prompt and completion of different kinds": (
        dict(rows=[{"prompt": "a", "completion": [{"role": "assistant", "content": "b"}]}]),
        TypeError,
        "prompt is str and completion is list",
        "both strings or both lists",
    ),
    "number as prompt": (dict(rows=[{"prompt": 3, "completion": 4}]), TypeError, "prompt is int", "prompt-completion"),
    "unknown role": (dict(rows=[chat(user_role="robot")]), ValueError, "role 'robot' is not allowed", "use one of"),
    "user role in the completion": (dict(rows=[chat(answer_role="user")]), ValueError, "role 'user'", "assistant"),
    "prompt ending with the assistant": (
        dict(rows=[chat(), chat(user_role="assistant")]),
        ValueError,
        "row 1: a conversational prompt must end",
        "user message",
    ),
    "message without content": (
        dict(rows=[{"prompt": [{"role": "user"}], "completion": [{"role": "assistant", "content": "b"}]}]),
        ValueError,
        "must be a dict with 'role' and 'content'",
        "'content'",
    ),
    "message with 'text' instead of 'content'": (
        dict(
            rows=[{"prompt": [{"role": "user", "text": "a"}], "completion": [{"role": "assistant", "content": "b"}]}]
        ),
        ValueError,
        "under 'text' instead of 'content'",
        "Rename the key to 'content'",
    ),
    "message with 'text', loaded from JSON (content None)": (
        dict(
            rows=[
                {
                    "prompt": [{"role": "user", "content": None, "text": "a"}],
                    "completion": [{"role": "assistant", "content": "b", "text": None}],
                }
            ]
        ),
        ValueError,
        "under 'text' instead of 'content'",
        "Rename the key to 'content'",
    ),
    "mixed formats": (
        dict(rows=[{"prompt": "a", "completion": "b"}]),  # replaced below by a two-format dataset
        ValueError,
        "mixes formats",
        "Use one format",
    ),
    "empty dataset": (dict(rows=[]), ValueError, "train_dataset is empty", "needs prompts"),
    "prompt too long": (dict(rows=[chat(user="x" * 400)]), ValueError, "the prompt has", "Raise max_length"),
    "reference too long for the improver's target": (
        dict(rows=[chat(answer="c" * 220)]),  # the default target is the reference: 221 tokens of max_length 256
        ValueError,
        "tokens and the reference 221; at most 3 fit beside it",
        "Raise max_length",
    ),
    "messages without an assistant turn": (
        dict(rows=[{"messages": [turn("user")]}]),
        ValueError,
        "train_dataset row 0 has no assistant turn",
        "Remove such rows",
    ),
    "messages ending on a user turn": (
        dict(
            rows=[{"messages": [turn("user"), turn("assistant")]}, {"messages": [turn("user"), turn("assistant")] * 2}]
            + [{"messages": [turn("user"), turn("assistant"), turn("user")]}]
        ),
        ValueError,
        "train_dataset row 2 ends on a 'user' turn",
        "Drop the trailing turns",
    ),
    "template leaves no room for a prompt": (
        dict(config={"max_length": 40}),
        ValueError,
        "max_length 40 - improver template",
        "Raise max_length",
    ),
    "callable template returning messages, no chat template": (
        dict(
            rows=[{"prompt": "reverse abc =", "completion": " cba"}],
            no_chat_template=True,
            config={"improver_template": messages_template},
        ),
        ValueError,
        "improver_template cannot be rendered for train_dataset row 0",
        "set `tokenizer.chat_template`",
    ),
    # tokenizer
    "tokenizer without chat template": (dict(no_chat_template=True), ValueError, "no chat template", "chat_template"),
    "tokenizer without eos": (dict(no_eos=True), ValueError, "no EOS token", "eos_token"),
    # config
    "template without {response}": (dict(config={"improver_template": "{prompt}"}), ValueError, "{response}", "Add"),
    "template without {prompt}": (dict(config={"improver_template": "{response}"}), ValueError, "{prompt}", "Add"),
    "zero steps in every phase": (
        dict(config={"improver_warmup_steps": 0, "improver_steps": 0, "dpo_steps": 0}),
        ValueError,
        "zero steps in every phase",
        "at least 1",
    ),
    "alpha above 1": (dict(config={"improver_alpha": 1.2}), ValueError, "improver_alpha must be in [0, 1]", "1.2"),
    "negative alpha": (dict(config={"improver_alpha": -0.1}), ValueError, "improver_alpha must be in", "-0.1"),
    "negative beta": (dict(config={"beta": -0.1}), ValueError, "beta must be > 0", "-0.1"),
    "unknown target strategy": (
        dict(config={"improver_target": "copy"}),
        ValueError,
        "improver_target 'copy'",
        "one of",
    ),
    "unknown pair source": (dict(config={"pair_source": "judge"}), ValueError, "pair_source 'judge'", "one of"),
    "unknown loss type": (dict(config={"loss_type": "hinge"}), ValueError, "loss_type 'hinge'", "sigmoid"),
    "reward model": (dict(config={"reward_model_path": "rm"}), ValueError, "SGPO uses no reward", "unset"),
    "use_vllm without vLLM": (dict(config={"use_vllm": True}), ImportError, "vLLM is not installed", "pip install"),
    "max_new_tokens over max_length": (
        dict(config={"max_new_tokens": 600, "max_length": 512}),
        ValueError,
        "max_length 512 - max_new_tokens 600 - improver_max_new_tokens 600 = -688",
        "Raise max_length",
    ),
    # trainer arguments
    "reward_funcs": (dict(trainer={"reward_funcs": no_reward}), ValueError, "takes no `reward_funcs`", "Remove"),
    "missing model path": (dict(model="./no/such/model"), FileNotFoundError, "does not exist", "save_pretrained"),
    "PEFT with reference re-sync": (
        dict(config={"sync_ref_model_each_dpo_phase": True}, trainer={"peft_config": "lora"}),
        ValueError,
        "not supported with PEFT",
        "sync_ref_model_each_dpo_phase=False",
    ),
}


def _escape(text: str) -> str:
    return "".join("\\" + c if c in "[](){}.*+?^$|\\" else c for c in text)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_rejected_with_problem_and_fix(tmp_path, tokenizer, case):
    spec, error, problem, fix = CASES[case]
    if spec.get("no_chat_template"):
        tokenizer.chat_template = None
    if spec.get("no_eos"):
        tokenizer.eos_token = None
    if case == "mixed formats":
        dataset = _MixedRows([chat(), {"prompt": "a", "completion": "b"}])
    elif "rows" in spec:
        rows = spec["rows"]
        dataset = Dataset.from_list(rows) if rows else Dataset.from_dict({"prompt": [], "completion": []})
    else:
        dataset = conversational_dataset(4)
    trainer_kwargs = dict(spec.get("trainer", {}))
    if trainer_kwargs.get("peft_config") == "lora":
        from peft import LoraConfig

        trainer_kwargs["peft_config"] = LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")

    with pytest.raises(error) as caught:
        config = make_config(tmp_path, **{"max_length": 256, "max_new_tokens": 16, **spec.get("config", {})})
        model = spec.get("model") or tiny_model(tokenizer)
        SGPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, **trainer_kwargs)
    message = str(caught.value)
    assert problem in message, message
    assert fix in message, message


class _MixedRows(list):
    """A list of rows with the column API of a Dataset: Arrow cannot hold strings and lists in one column."""

    column_names = ["prompt", "completion"]

    def __getitem__(self, key):
        if isinstance(key, str):
            return [row[key] for row in self]
        return super().__getitem__(key)


def test_the_table_has_at_least_twenty_cases():
    assert len(CASES) >= 20


def test_a_tokenizer_without_pad_token_falls_back_to_eos(tmp_path, tokenizer):
    tokenizer.pad_token = None
    trainer = SGPOTrainer(
        model=tiny_model(tokenizer),
        args=make_config(tmp_path),
        train_dataset=conversational_dataset(4),
        processing_class=tokenizer,
    )
    assert tokenizer.pad_token == tokenizer.eos_token
    trainer.train()  # padding with EOS does not confuse the EOS bookkeeping
    assert trainer.state.global_step == 4


def test_existing_output_dir_is_never_overwritten_silently(tmp_path, tokenizer):
    output_dir = tmp_path / "out"
    (output_dir / "checkpoint-7").mkdir(parents=True)
    (output_dir / "model.safetensors").write_bytes(b"earlier run")
    trainer = SGPOTrainer(
        model=tiny_model(tokenizer),
        args=make_config(tmp_path),
        train_dataset=conversational_dataset(4),
        processing_class=tokenizer,
    )
    with pytest.raises(FileExistsError, match="is not empty .*checkpoint-7.*overwrite_output_dir"):
        trainer.train()
    assert (output_dir / "model.safetensors").read_bytes() == b"earlier run"
    allowed = SGPOTrainer(
        model=tiny_model(tokenizer),
        args=make_config(tmp_path, overwrite_output_dir=True, max_steps=1),
        train_dataset=conversational_dataset(4),
        processing_class=tokenizer,
    )
    allowed.train()


def test_config_errors_come_before_any_model_is_built(tmp_path):
    # SGPOConfig validates on construction: no tokenizer or model is needed to see the error.
    with pytest.raises(ValueError, match="improver_alpha"):
        SGPOConfig(output_dir=str(tmp_path), improver_alpha=2.0)


# ------------------------------------------------------------------ the command line, before any model is loaded

MODEL = "--model_name_or_path"
DATA = "--dataset_name"
CLI_CASES = {
    "--load_in_4bit without bitsandbytes": (
        [MODEL, "{model}", DATA, "{data}", "--load_in_4bit", "--use_peft"],
        ImportError,
        "--load_in_4bit needs bitsandbytes",
        "pip install bitsandbytes",
    ),
    "--load_in_8bit without --use_peft": (
        [MODEL, "{model}", DATA, "{data}", "--load_in_8bit", "--fake_bitsandbytes"],
        ValueError,
        "cannot be trained directly",
        "add --use_peft",
    ),
    "--use_vllm without vLLM": (
        [MODEL, "{model}", DATA, "{data}", "--use_vllm"],
        ImportError,
        "vLLM is not installed",
        "use_vllm=False",
    ),
    "--use_peft with reference re-sync": (
        [MODEL, "{model}", DATA, "{data}", "--use_peft", "--sync_ref_model_each_dpo_phase"],
        ValueError,
        "not supported with --use_peft",
        "Drop one of the two options",
    ),
    "Hub data set id, offline and not cached": (
        [MODEL, "{model}", DATA, "no-such-org/no-such-data"],
        ValueError,
        "is not a local file or folder, and the Hub is switched off",
        "save_to_disk",
    ),
    "missing data file": ([MODEL, "{model}", DATA, "missing.jsonl"], FileNotFoundError, "does not exist", "path"),
    "unsupported data file": ([MODEL, "{model}", DATA, "{txt}"], ValueError, "unsupported file type '.txt'", ".csv"),
    "missing training split": (
        [MODEL, "{model}", DATA, "{data}", "--dataset_train_split", "sft"],
        ValueError,
        "has no split 'sft' (it has ['train'])",
        "--dataset_train_split",
    ),
    "missing model folder": ([MODEL, "./no-such-model", DATA, "{data}"], FileNotFoundError, "is not a folder", "Hub"),
    "model folder without config.json": (
        [MODEL, "{empty}", DATA, "{data}"],
        FileNotFoundError,
        "without config.json",
        "save_pretrained",
    ),
    "model without data": ([MODEL, "{model}"], ValueError, "Pass both", "or neither"),
    "--eval_strategy steps without eval data": (
        [MODEL, "{model}", DATA, "{data}", "--eval_strategy", "steps"],
        ValueError,
        "needs eval data",
        "--eval_dataset_name",
    ),
    "generated tokens over max_length": (
        [MODEL, "{model}", DATA, "{data}", "--max_new_tokens", "600", "--max_length", "512"],
        ValueError,
        "max_length 512 - max_new_tokens 600 - improver_max_new_tokens 600 = -688",
        "Raise max_length",
    ),
    "max_length with no room for the improver template": (
        [MODEL, "{model}", DATA, "{data}", "--max_length", "140", "--max_new_tokens", "30"],
        ValueError,
        "max_length leaves no room for any prompt: max_length 140 - improver template",
        "shorten improver_template",
    ),
    "a prompt too long for max_length": (
        [MODEL, "{model}", DATA, "{long}", "--max_length", "400", "--max_new_tokens", "30"],
        ValueError,
        "train_dataset row 1: the prompt has",
        "long_prompts='drop'",
    ),
    "a messages row ending on a user turn": (
        [MODEL, "{model}", DATA, "{user_last}"],
        ValueError,
        "ends on a 'user' turn",
        "Drop the trailing turns",
    ),
    "a message with 'text' instead of 'content'": (
        [MODEL, "{model}", DATA, "{text_key}"],
        ValueError,
        "under 'text' instead of 'content'",
        "Rename the key to 'content'",
    ),
    "--eval_dataset_name without an eval strategy": (
        [MODEL, "{model}", DATA, "{data}", "--eval_dataset_name", "{data}"],
        ValueError,
        "would never be used",
        "--eval_strategy steps",
    ),
    "an empty data file": ([MODEL, "{model}", DATA, "{empty_file}"], ValueError, "is empty", "Write your rows"),
    "a CSV file with a header only": ([MODEL, "{model}", DATA, "{header_only}"], ValueError, "is empty", "rows"),
    "a model name that is no folder, with the Hub off": (
        [MODEL, "my-model", DATA, "{data}"],
        FileNotFoundError,
        "is not a local folder",
        "write it as ./my-model",
    ),
    "a tracker that is not installed": (
        [MODEL, "{model}", DATA, "{data}", "--report_to", "wandb"],
        ImportError,
        "--report_to wandb needs the 'wandb' package",
        "--report_to none",
    ),
    "an attention implementation that is not installed": (
        [MODEL, "{model}", DATA, "{data}", "--attn_implementation", "flash_attention_2"],
        ImportError,
        "needs the 'flash_attn' package",
        "--attn_implementation sdpa",
    ),
    "--push_to_hub with the Hub off": (
        [MODEL, "{model}", DATA, "{data}", "--push_to_hub", "true"],
        ValueError,
        "--push_to_hub needs the Hub, and the Hub is switched off",
        "upload output_dir later",
    ),
    "--resume_from_checkpoint with no checkpoint": (
        [MODEL, "{model}", DATA, "{data}", "--resume_from_checkpoint", "true"],
        FileNotFoundError,
        "holds no checkpoint-N folder",
        "Drop --resume_from_checkpoint",
    ),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_command_line_options_that_cannot_work_fail_before_any_model_is_loaded(tmp_path, monkeypatch, case):
    argv, error, problem, fix = CLI_CASES[case]
    build_char_tokenizer().save_pretrained(tmp_path / "model")  # the data checks need the tokenizer, not the model
    (tmp_path / "model" / "config.json").write_text("{}")  # a folder that passes the early checks
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not data")
    rows = [{"prompt": "reverse abc =", "completion": " cba"}] * 4
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    paths = {"model": tmp_path / "model", "data": tmp_path / "data.jsonl", "txt": tmp_path / "notes.txt"}
    files = {
        "long": [rows[0], {"prompt": "x" * 400, "completion": " cba"}],
        "user_last": [{"messages": [turn("user", "a"), turn("assistant", "b")]}] * 2
        + [{"messages": [turn("user", "a"), turn("assistant", "b"), turn("user", "c")]}],
        "text_key": [{"messages": [{"role": "user", "text": "a"}, {"role": "assistant", "text": "b"}]}],
    }
    for name, file_rows in files.items():
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(row) + "\n" for row in file_rows))
    paths["empty"] = tmp_path / "empty"
    paths.update(empty_file=tmp_path / "none.jsonl", header_only=tmp_path / "header.csv")
    paths["empty_file"].write_text("")
    paths["header_only"].write_text("prompt,completion\n")
    argv = [arg.format(**paths) for arg in argv if arg != "--fake_bitsandbytes"]
    if "--fake_bitsandbytes" in CLI_CASES[case][0]:
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes" else find_spec(name, *a)
        )

    def no_model_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad option was refused")

    monkeypatch.setattr(cli, "load_model", no_model_loading)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error) as caught:
        cli.main([*argv, "--output_dir", str(tmp_path / "out")])
    message = str(caught.value)
    assert problem in message, message
    assert fix in message, message
    assert not (tmp_path / "out").exists()
