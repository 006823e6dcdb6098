"""Griffe extension: read the Hugging Face / TRL docstring style as Google style, for mkdocstrings.

The code keeps TRL's docstring conventions, which griffe's Google parser half-understands:

- parameter headers such as ``name (`str` or `Callable`, *optional*, defaults to `"x"`):`` become
  ``name (str | Callable):`` (the default is shown from the signature anyway);
- ``a, b, c: text`` (several parameters sharing one description) becomes one entry per name;
- a ``> Group title`` line inside a ``Parameters:`` block starts a new ``Parameters: Group title`` section, so the
  groups of `SGPOConfig` render as separate, titled tables;
- ``[`Name`]`` (a doc-builder cross-reference) links to ``trl_sgpo.Name`` when that is a public name, and is
  plain code otherwise.

Only the text handed to the parser changes; the source files are not touched.
"""

import ast
import re
from pathlib import Path

import griffe


def _public_names() -> set[str]:
    """``trl_sgpo.__all__``, read from the source without importing the package."""
    init = Path(__file__).resolve().parents[2] / "trl_sgpo" / "__init__.py"
    for node in ast.walk(ast.parse(init.read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


PUBLIC_NAMES = _public_names()
SECTION = re.compile(r"^(Args|Arguments|Parameters|Params):\s*$")
ITEM = re.compile(r"^(?P<names>[\w*]+(?:\s*,\s*[\w*]+)*)\s*(?:\((?P<type>.*?)\))?\s*:(?:\s+(?P<desc>.*))?$")
CROSS_REFERENCE = re.compile(r"\[`([\w.]+)`\](?![\[(])")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _clean_type(text: str | None) -> str:
    if not text:
        return ""
    text = CROSS_REFERENCE.sub(r"\1", text)
    text = re.sub(r",?\s*defaults to .*$", "", text)
    text = re.sub(r",?\s*\*optional\*", "", text)
    text = text.replace("`", "")
    text = re.sub(r"\s+or\s+", " | ", text)
    return text.strip(" ,")


def _cross_references(text: str) -> str:
    def link(match: re.Match) -> str:
        name = match.group(1)
        if name in PUBLIC_NAMES:
            return f"[`{name}`][trl_sgpo.{name}]"
        return f"`{name}`"

    return CROSS_REFERENCE.sub(link, text)


def convert(docstring: str) -> str:
    """Rewrite one docstring (already dedented) from HF style to griffe's Google style."""
    lines = docstring.splitlines()
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        match = SECTION.match(line)
        if not match:
            out.append(line)
            index += 1
            continue
        # A parameters section: collect its items up to the first non-blank line indented like the header.
        header_indent = _indent(line)
        index += 1
        block = []
        while index < len(lines) and (not lines[index].strip() or _indent(lines[index]) > header_indent):
            block.append(lines[index])
            index += 1
        while block and not block[-1].strip():
            block.pop()
        item_indent = min((_indent(b) for b in block if b.strip()), default=header_indent + 4)
        pad = " " * item_indent
        # [(group title or None, [(names, type, description lines), ...]), ...]
        sections: list[tuple[str | None, list[tuple[list[str], str, list[str]]]]] = [(None, [])]
        for raw in block:
            if not raw.strip():
                continue
            if _indent(raw) == item_indent:
                text = raw.strip()
                if text.startswith(">"):
                    if not sections[-1][1]:
                        sections.pop()
                    sections.append((text.lstrip("> ").strip(), []))
                    continue
                item = ITEM.match(text)
                if item:
                    names = [name.strip() for name in item.group("names").split(",")]
                    desc = [item.group("desc")] if item.group("desc") else []
                    sections[-1][1].append((names, _clean_type(item.group("type")), desc))
                    continue
            if sections[-1][1]:
                sections[-1][1][-1][2].append(raw.strip())
            else:  # text before any item: keep it, as a description-less line
                out.append(raw)
        sections = [section for section in sections if section[1]]

        for number, (section_title, section_items) in enumerate(sections):
            if number or (out and out[-1].strip()):
                out.append("")
            out.append(f"{match.group(1)}: {section_title}" if section_title else f"{match.group(1)}:")
            for names, type_, desc in section_items:
                for name in names:
                    annotation = f" ({type_})" if type_ else ""
                    first, *rest = desc or [""]
                    out.append(f"{pad}{name}{annotation}: {first}".rstrip())
                    out.extend(f"{pad}    {more}" for more in rest)
        if index < len(lines):
            out.append("")
    return _cross_references("\n".join(out))


class HFDocstrings(griffe.Extension):
    """Convert every docstring of the loaded package before griffe parses it."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None and not obj.is_alias:
            obj.docstring.value = convert(obj.docstring.value)
