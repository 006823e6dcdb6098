"""The SGPO parts of the model card: the run's settings and version, and where the model and data came from.

TRL's card links the base model and the data set to the Hub. A model built in Python or loaded from a local folder,
and a local data file, have no Hub page: those links would read "[None](https://huggingface.co/None)". They are
replaced by plain words here.
"""

import os
import re

from ..config import sgpo_field_names


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
        f"Trained with trl-sgpo {version}: the policy was trained with DPO "
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


def is_hub_dataset(name: str | None) -> bool:
    """Whether ``name`` can be a Hub data set id (not a local file or folder), so that the card may link it."""
    return bool(name) and not os.path.exists(name) and not name.startswith((".", "/", "~"))


def describe_sources(card: str, model_path: str | None, dataset_name: str | None, saved_to: str) -> str:
    """Replace TRL's Hub links to a base model or data set that have no Hub page by plain words.

    ``model_path``: the base model's name or local path ('' for a model built in Python); ``dataset_name``: a Hub id
    (linked by TRL already) or a local file or folder; ``saved_to``: the folder the card is saved in, which the quick
    start loads when the model has no Hub id.
    """
    model = f"the local model `{model_path}`" if model_path else "a model built in Python (no Hub id or local path)"
    card = card.replace("[None](https://huggingface.co/None)", model, 1)
    if dataset_name and not is_hub_dataset(dataset_name):
        data = f" on the local data `{os.path.basename(os.path.normpath(dataset_name))}`"
        line = re.compile(r"^(This model is a fine-tuned version of [^\n]*?)\.$", flags=re.M)
        card = line.sub(lambda match: f"{match.group(1)}{data}.", card, count=1)
    return card.replace('model="None"', f'model="{saved_to}"')
