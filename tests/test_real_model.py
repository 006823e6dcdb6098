"""The headline paths on a real instruct model, SmolLM2-135M-Instruct (the `smollm2_dir` fixture), a few small steps
each, every run reloading what it saved:

- the README's real-model commands, exactly as written (`accelerate launch examples/sgpo.py ... --use_peft`): Step 1
  alone, saved merged, then Step 2 from it; LoRA at the command line's LoRA rates, conversational data, the next-turn
  format that `auto` picks for SmolLM2's ChatML template;
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
README_COMMANDS = re.compile(
    r"^accelerate launch examples/sgpo\.py --model_name_or_path (?:~/\.cache/trl_sgpo/\S+|smol-step1) .*$", re.M
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
@pytest.mark.timeout(1200)
def test_the_readme_commands_train_step_1_then_a_lora_adapter_on_smollm2(smollm2_dir, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_sgpo.cli.command import LORA_RATES

    step1_command, step2_command = README_COMMANDS.findall((ROOT / "README.md").read_text(encoding="utf-8"))
    _write_conversational(tmp_path / "data.jsonl", 16)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    outputs = []
    for command in (step1_command, step2_command):
        argv = shlex.split(command)
        if "~" in argv[argv.index("--model_name_or_path") + 1]:
            argv[argv.index("--model_name_or_path") + 1] = smollm2_dir  # the README's path, wherever the cache is
        argv[argv.index("examples/sgpo.py")] = str(ROOT / "examples" / "sgpo.py")
        completed = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=1100, env=env)
        assert completed.returncode == 0, completed.stderr[-3000:]
        outputs.append(completed.stdout + completed.stderr)
    step1, step2 = tmp_path / "smol-step1", tmp_path / "smol-sgpo"
    # Step 1: every step trained the improver; the adapter was merged into an ordinary model folder that moved.
    assert "would barely move a LoRA adapter" in outputs[0]  # the LoRA rates, said
    assert (step1 / "model.safetensors").is_file() and not (step1 / "adapter_config.json").exists()
    argv = shlex.split(step1_command)
    rows, batch = len(_addition_rows(16)), int(argv[argv.index("--per_device_train_batch_size") + 1])
    assert f"SGPO run: {-(-rows // batch)} improver (Step 1) steps, 0 DPO steps." in outputs[0]
    merged, base = (AutoModelForCausalLM.from_pretrained(folder) for folder in (step1, smollm2_dir))
    assert not torch.equal(
        merged.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight
    )
    # Step 2: DPO steps only, pairs kept, an adapter that moved, said where it went.
    output = outputs[1]
    assert "improver_format='auto': using 'next_turn'" in output  # said, at warning level
    kept = re.search(r"DPO pairs: (\d+) kept of (\d+) drafted", output)
    assert kept and int(kept.group(1)) > 0, output[-3000:]
    assert f"saved to {step2}" in output
    # Adam's first update moves every parameter with a gradient by the learning rate (bias-corrected m/sqrt(v) is
    # the gradient's sign): lora_B starts at zero, so its largest element is about the rate after 4 steps; at TRL's
    # full-fine-tuning default (5e-7) it would stay 200 times smaller.
    adapter = load_file(step2 / "adapter_model.safetensors")
    largest = max(float(t.abs().max()) for name, t in adapter.items() if "lora_B" in name)
    assert largest >= 0.5 * LORA_RATES["learning_rate"], largest
    card = (step2 / "README.md").read_text(encoding="utf-8")
    assert "| `improver_format` | `next_turn` |" in card and "library_name: peft" in card
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(step1), step2)
    assert isinstance(_generates(model, AutoTokenizer.from_pretrained(step2)), str)


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
