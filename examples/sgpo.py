"""Train a model with SGPO (Self-Generated Preference Optimization, arXiv:2507.20181).

Offline, on the built-in verifiable world (a shipped tiny model; a couple of minutes on a laptop CPU):

    accelerate launch examples/sgpo.py

On your own model and prompt-completion data (the completion is the SFT reference):

    accelerate launch examples/sgpo.py \
        --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
        --dataset_name your-org/your-prompt-completion-data \
        --learning_rate 5e-7 --per_device_train_batch_size 8 --gradient_accumulation_steps 4 \
        --max_new_tokens 256 --max_length 1024 \
        --output_dir Qwen2.5-0.5B-SGPO [--use_peft] [--push_to_hub]

Every `SGPOConfig` and `ModelConfig` option is a flag (`--help` lists them), and `--config recipe.yaml` reads them
from a file. The `trl-sgpo` command installed with the package runs the same program.
"""

from trl_sgpo.cli.command import run


if __name__ == "__main__":
    run()
