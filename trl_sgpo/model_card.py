"""The SGPO section of the model card: the settings that define an SGPO run, and the package version."""

from .config import sgpo_field_names


# Parent settings that shape an SGPO run as much as SGPO's own fields do.
KEY_TRAINING_FIELDS = (
    "learning_rate",
    "beta",
    "loss_type",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "max_new_tokens",
    "max_length",
    "temperature",
    "use_vllm",
    "seed",
)


def config_section(args, version: str) -> str:
    """Markdown: SGPO's own settings and the key training settings of this run, as a table."""
    config = args.to_dict()
    rows = [(name, config.get(name)) for name in sgpo_field_names() + list(KEY_TRAINING_FIELDS)]
    lines = [
        "## SGPO configuration",
        "",
        f"Trained with [trl-sgpo](https://github.com/trl-sgpo/trl-sgpo) {version}: the policy was trained with DPO "
        "on pairs (chosen = the model's own improver rewrite, rejected = its own sample), with no preference data, "
        "reward model or judge.",
        "",
        "| setting | value |",
        "| --- | --- |",
    ]
    for name, value in rows:
        text = str(value).replace("|", "\\|").replace("\n", "\\n")
        lines.append(f"| `{name}` | `{text}` |")
    return "\n".join(lines) + "\n\n"
