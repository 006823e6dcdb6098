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


def resolved_settings(args, step1_steps: int | None = None) -> dict:
    """The run's settings as they acted: unset improver sampling settings resolved to the policy's, Step 1 in steps,
    and the prompt field of the format not used left out (the template under the next turn, and the reverse)."""
    config = args.to_dict()
    settings = {name: config.get(name) for name in sgpo_field_names() + list(KEY_TRAINING_FIELDS)}
    for own, policy in (("improver_temperature", "temperature"), ("improver_top_p", "top_p")):
        if settings.get(own) is None:
            settings[own] = f"{config.get(policy)} (the policy's)"
    if settings.get("improver_max_new_tokens") is None:
        settings["improver_max_new_tokens"] = f"{config.get('max_new_tokens')} (max_new_tokens)"
    unused = "improver_template" if settings.get("improver_format") == "next_turn" else "improver_instruction"
    settings.pop(unused, None)
    if step1_steps is not None:
        settings["improver_warmup_steps"] = f"{settings['improver_warmup_steps']} ({step1_steps} steps run)"
    return settings


def summary_section(figures: dict) -> str:
    """Markdown: what the run did (`run.summary.RunSummary` figures)."""
    if not figures:
        return ""
    drafted, kept = figures.get("pairs_drafted", 0), figures.get("pairs_kept", 0)
    dropped = ", ".join(f"{count} {reason}" for reason, count in figures.get("pairs_dropped", {}).items()) or "none"
    pairs = f"{kept} of {drafted} drafted ({100 * kept / drafted:.0f}%); dropped: {dropped}" if drafted else None
    rows = [
        ("Step 1 (improver) steps", figures.get("step1_steps")),
        ("DPO steps", figures.get("dpo_steps")),
        ("DPO pairs kept", pairs or "none drafted (Step 1 only)"),
    ]
    if figures.get("rewrite_closer") is not None:
        rows.append(("rewrites closer to the reference than their draft", f"{100 * figures['rewrite_closer']:.0f}%"))
    if figures.get("readiness") is not None:
        level, ready = figures["readiness"]
        rows.append(
            ("improver readiness (last measured)", f"{100 * level:.0f}% ({'ready' if ready else 'not ready'})")
        )
    lines = ["## SGPO run", "", "| | |", "| --- | --- |", *(f"| {name} | {value} |" for name, value in rows)]
    return "\n".join(lines) + "\n\n"


def config_section(args, version: str, step1_steps: int | None = None) -> str:
    """Markdown: SGPO's own settings and the key training settings of this run, as they acted, as a table."""
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
    for name, value in resolved_settings(args, step1_steps).items():
        text = str(value).replace("|", "\\|").replace("\n", "\\n")
        lines.append(f"| `{name}` | `{text}` |")
    return "\n".join(lines) + "\n\n"


def quick_start_prompt(card: str, prompt) -> str:
    """TRL's quick start asks every model a fixed question; ask one of the training prompts instead."""
    if isinstance(prompt, list):
        prompt = next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), prompt[-1]["content"])
    return re.sub(r'^question = ".*"$', lambda _: f"question = {prompt!r}", card, count=1, flags=re.M)


def adapter_front_matter(card: str, base_model: str | None) -> str:
    """A LoRA adapter's card: ``library_name: peft`` and its base model (TRL writes ``transformers``)."""
    card = card.replace("library_name: transformers", "library_name: peft", 1)
    if base_model and "base_model:" not in card.split("---", 2)[1]:
        card = card.replace("library_name: peft", f"base_model: {base_model}\nlibrary_name: peft", 1)
    return card


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
