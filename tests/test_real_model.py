"""The headline paths on a real instruct model, SmolLM2-135M-Instruct (the `smollm2_dir` fixture), a few small steps
each, every run reloading what it saved:

- the README's real-model command, exactly as written (`accelerate launch examples/sgpo.py ... --use_peft`):
  LoRA, conversational data, the next-turn format that `auto` picks for SmolLM2's ChatML template;
- the Python API: full fine-tuning, `messages` data, the template format, gradient checkpointing on.
"""

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch


ROOT = Path(__file__).resolve().parents[1]
README_COMMAND = re.compile(
    r"^accelerate launch examples/sgpo\.py --model_name_or_path ~/\.cache/trl_sgpo/\S+ .*$", re.M
)


def _addition_rows(count: int) -> list[tuple[str, str]]:
    return [
        (f"What is {a} + {b}? Answer with the number.", str(a + b)) for a, b in zip(range(3, 90, 7), range(5, 99, 11))
    ][:count]


def _write_conversational(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for question, answer in _addition_rows(count):
            row = {
                "prompt": [{"role": "user", "content": question}],
                "completion": [{"role": "assistant", "content": answer}],
            }
            handle.write(json.dumps(row) + "\n")


def _generates(model, tokenizer) -> str:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 2?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(**ids, max_new_tokens=4, do_sample=False)
    return tokenizer.decode(output[0, ids["input_ids"].size(1) :], skip_special_tokens=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_readme_command_trains_a_lora_adapter_on_smollm2(smollm2_dir, tmp_path):
    (command,) = README_COMMAND.findall((ROOT / "README.md").read_text(encoding="utf-8"))
    argv = shlex.split(command)
    argv[argv.index("--model_name_or_path") + 1] = smollm2_dir  # the README's path, wherever the cache is here
    argv[argv.index("examples/sgpo.py")] = str(ROOT / "examples" / "sgpo.py")
    _write_conversational(tmp_path / "data.jsonl", 16)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    completed = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=880, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    output = completed.stdout + completed.stderr
    assert "improver_format='auto': using 'next_turn'" in output  # said, at warning level
    out = tmp_path / "out"
    assert (out / "adapter_model.safetensors").is_file() and (out / "README.md").is_file()
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "| `improver_format` | `next_turn` |" in card  # the format used, not 'auto'

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2_dir), out)
    assert isinstance(_generates(model, tokenizer), str)
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    phases = state["stateful_callbacks"]["SGPOPhaseCallback"]["attributes"]["phase_runs"]
    assert phases == [["improver", 1], ["dpo", 3]]  # Step 1 (10% of 4 steps, rounded up), then DPO


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_full_fine_tuning_from_messages_with_the_template_and_gradient_checkpointing(smollm2_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_sgpo import SGPOConfig, SGPOTrainer

    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in _addition_rows(8)
    ]
    args = SGPOConfig(
        output_dir=str(tmp_path / "full"),
        max_steps=2,
        improver_warmup_steps=1,  # one improver step, then one DPO step
        per_device_train_batch_size=2,
        max_new_tokens=16,
        max_length=256,
        improver_format="template",
        gradient_checkpointing=True,
        learning_rate=1e-5,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
    )
    trainer = SGPOTrainer(
        model=smollm2_dir,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(smollm2_dir),
    )
    assert trainer.model.is_gradient_checkpointing
    before = trainer.model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    trainer.train()
    trainer.save_model()
    assert not torch.equal(before, trainer.model.model.layers[0].self_attn.q_proj.weight)
    phases = [log.get("sgpo/phase") for log in trainer.state.log_history if "sgpo/phase" in log]
    assert phases == [0.0, 1.0]  # improver, then DPO
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "full")
    torch.testing.assert_close(
        reloaded.model.layers[0].self_attn.q_proj.weight, trainer.model.model.layers[0].self_attn.q_proj.weight
    )
    assert isinstance(_generates(reloaded, AutoTokenizer.from_pretrained(tmp_path / "full")), str)
