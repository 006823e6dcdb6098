"""MkDocs hook: generate the `SGPOConfig` reference tables from the code at build time.

`docs/configuration.md` holds the placeholder ``<!-- sgpo-config-fields -->``; this hook replaces it with one table
per group of fields, read from ``dataclasses.fields(SGPOConfig)``:

- the SGPO fields are those that `OnlineDPOConfig` does not have, plus the parent fields whose default, type or help
  `SGPOConfig` overrides (``bf16`` and ``gradient_checkpointing``: device-aware defaults);
- each row shows the field's type, its default and ``metadata["help"]`` (and ``metadata["choices"]``);
- the groups are the ``> Title`` lines of the ``Parameters:`` block of the `SGPOConfig` docstring; overridden parent
  fields go to "Device defaults", and a field the docstring does not list goes to "Other settings".

Nothing here is copied by hand: a new field, a changed default or help text shows up at the next build.
"""

import dataclasses
import inspect
import re
from typing import Any


PLACEHOLDER = "<!-- sgpo-config-fields -->"
PAGE = "configuration.md"
DEVICE_GROUP = "Device defaults (parent fields whose defaults SGPO makes device-aware)"
OTHER_GROUP = "Other settings"
_DOC_ITEM = re.compile(r"^\s+(\w+)\s*\(")
_DOC_GROUP = re.compile(r"^\s+>\s*(.+?)\s*$")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|])")


def _escape(text: str) -> str:
    """Plain help text -> Markdown that renders as the same text inside a table cell."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(text.split()))


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _default(field: dataclasses.Field, constants: dict[int, str]) -> tuple[str, str | None]:
    """The default as a table cell, and (for long strings) the full value to show under the table."""
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required", None
    if isinstance(value, str) and (len(value) > 40 or "\n" in value):
        name = constants.get(id(value), "the text below")
        return f"`{name}` (below)", value
    return f"`{value!r}`", None


def _doc_groups(config_class: type) -> tuple[list[str], dict[str, str]]:
    """Group titles in docstring order, and the group of every field the docstring lists."""
    titles: list[str] = []
    group_of: dict[str, str] = {}
    title = OTHER_GROUP
    for line in inspect.cleandoc(config_class.__doc__ or "").splitlines():
        if match := _DOC_GROUP.match(line):
            title = match.group(1)
            titles.append(title)
        elif match := _DOC_ITEM.match(line):
            group_of.setdefault(match.group(1), title)
    return titles, group_of


def sgpo_fields() -> list[tuple[str, dataclasses.Field]]:
    """(group title, field) for every field SGPO adds to or overrides in `OnlineDPOConfig`, in declaration order."""
    from trl.experimental.online_dpo import OnlineDPOConfig

    from trl_sgpo import SGPOConfig

    parent = {field.name: field for field in dataclasses.fields(OnlineDPOConfig)}
    _, group_of = _doc_groups(SGPOConfig)
    selected = []
    for field in dataclasses.fields(SGPOConfig):
        base = parent.get(field.name)
        if base is None:
            selected.append((group_of.get(field.name, OTHER_GROUP), field))
        elif (base.default, base.type, dict(base.metadata)) != (field.default, field.type, dict(field.metadata)):
            selected.append((group_of.get(field.name, DEVICE_GROUP), field))
    return selected


def render_config_tables(heading_level: int = 3) -> str:
    """The Markdown of all groups: a heading, a table, and any long default values."""
    import trl_sgpo.config as config_module
    from trl_sgpo import SGPOConfig

    constants = {id(value): name for name, value in vars(config_module).items() if name.isupper()}
    titles, _ = _doc_groups(SGPOConfig)
    fields = sgpo_fields()
    order = titles + [t for t in (DEVICE_GROUP, OTHER_GROUP) if t not in titles]
    blocks = []
    for title in order:
        rows = [field for group, field in fields if group == title]
        if not rows:
            continue
        lines = [f"{'#' * heading_level} {title}", "", "| Field | Type | Default | Description |", "|---|---|---|---|"]
        long_defaults = []
        for field in rows:
            default, full = _default(field, constants)
            help_text = _escape(field.metadata.get("help", ""))
            if choices := field.metadata.get("choices"):
                help_text += " One of: " + ", ".join(f"`{choice}`" for choice in choices) + "."
            # Pipes inside code spans do not split Python-Markdown table cells: no escaping there.
            lines.append(f"| `{field.name}` | `{_type_name(field.type)}` | {default} | {help_text} |")
            if full is not None:
                long_defaults.append((field.name, default, full))
        for name, default, full in long_defaults:
            fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", full)), default=0) + 1)
            lines += ["", f"Default of `{name}`, {default.replace(' (below)', '')}:", "", f"{fence}text", full, fence]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if PLACEHOLDER not in markdown:
        from mkdocs.exceptions import PluginError

        raise PluginError(f"{PAGE} lost its placeholder {PLACEHOLDER}: the SGPOConfig tables have nowhere to go.")
    return markdown.replace(PLACEHOLDER, render_config_tables())
