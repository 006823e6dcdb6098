"""Every default the docs and the README state for an `SGPOConfig` field is the field's default in the code.

The claims are read from the text, in the forms the pages use:

- a code span naming a field, then ``(default `v`)``, ``(default: `v`)``, ``(the default `v`)`` or
  ``(the default, `v`)`` within a few words: "Keep `improver_loss_weight > 0` (default `0.3`)";
- ``default `name=v` `` (or ``defaults `a=v, b=w` ``), and ``by default `name=v` ``;
- a table row ``| `"v"` (default) |`` in a table whose header names the field: "| `improver_target` | Target |".

Values are compared as Python literals (``0.1``, ``"reference"``, ``False``); a claim whose value is prose
("the same") is not a literal and is skipped.
"""

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from trl_sgpo import SGPOConfig


ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
DEFAULTS = {
    f.name: f.default
    for f in dataclasses.fields(SGPOConfig)
    if f.default is not dataclasses.MISSING and not callable(f.default)
}
CODE_THEN_DEFAULT = re.compile(
    r"`(?P<code>[^`]+)`[^`()|]{0,40}(?:\((?:the )?defaults?[:,]?|by default) ?`(?P<value>[^`]+)`"
)
DEFAULT_THEN_ASSIGNMENTS = re.compile(r"defaults? (?:is |are |stays )?\(?`(?P<code>[^`]*=[^`]*)`")
VALUE_BY_DEFAULT = re.compile(r"`(?P<code>\w+)`: `(?P<value>[^`]+)` by default")
DEFAULT_STAYS = re.compile(r"`(?P<code>\w+)`[^`|]{0,60}the default (?:is|stays) `(?P<value>[^`]+)`")
# a table row whose first cell names fields: "| `a`, `b` | ... (default `1`, `2`) |" or "| `a` | `1` (the default) |"
ROW_FIELDS = re.compile(r"^\|(?P<cell>[^|]+)\|(?P<rest>.*)$")
ROW_DEFAULTS = re.compile(r"\(default (?P<values>`[^)]+)\)|(?P<before>(?:`[^`]+`(?:, )?)+) \(the defaults?\)")
TABLE_DEFAULT = re.compile(r"^\|\s*`(?P<value>[^`]+)`\s*\(default\)\s*\|")
TABLE_HEADER = re.compile(r"^\|\s*`(?P<name>\w+)`\s*\|")


def _literal(text: str):
    """The value a claim states: a Python literal, or a bare word (a string field's value written unquoted)."""
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text if re.fullmatch(r"[a-z_]+", text) else None


def _field_in(code: str) -> str | None:
    names = [name for name in re.findall(r"[A-Za-z_]\w*", code) if name in DEFAULTS]
    return names[0] if names else None


def _row_claims(line: str) -> list[tuple[str, object]]:
    """Defaults a table row states for the fields its first cell names, in order."""
    row = ROW_FIELDS.match(line)
    if not row:
        return []
    names = [name for name in re.findall(r"`(\w+)`", row["cell"]) if name in DEFAULTS]
    match = ROW_DEFAULTS.search(row["rest"]) if names else None
    if not match:
        return []
    values = re.findall(r"`([^`]+)`", match["values"] or match["before"])
    if len(values) != len(names):
        return []
    return [(name, _literal(value)) for name, value in zip(names, values) if _literal(value) is not None]


def default_claims(text: str) -> list[tuple[int, str, object]]:
    """(line number, field, claimed default) for each default the text states for an `SGPOConfig` field."""
    claims = []
    table_field = None
    for number, line in enumerate(text.splitlines(), start=1):
        header = TABLE_HEADER.match(line)
        if header and header["name"] in DEFAULTS:
            table_field = header["name"]
        elif not line.startswith("|"):
            table_field = None
        for match in CODE_THEN_DEFAULT.finditer(line):
            name, value = _field_in(match["code"]), _literal(match["value"])
            if name and value is not None:
                claims.append((number, name, value))
        for match in DEFAULT_THEN_ASSIGNMENTS.finditer(line):
            for assignment in match["code"].split(","):
                name, _, value = assignment.partition("=")
                if name.strip() in DEFAULTS and _literal(value) is not None:
                    claims.append((number, name.strip(), _literal(value)))
        for match in [*DEFAULT_STAYS.finditer(line), *VALUE_BY_DEFAULT.finditer(line)]:
            if match["code"] in DEFAULTS and _literal(match["value"]) is not None:
                claims.append((number, match["code"], _literal(match["value"])))
        claims += [(number, name, value) for name, value in _row_claims(line)]
        row = TABLE_DEFAULT.match(line)
        if row and table_field and _literal(row["value"]) is not None:
            claims.append((number, table_field, _literal(row["value"])))
    return claims


def wrong_defaults(text: str) -> list[str]:
    return [
        f"line {number}: {name} default {claimed!r}, but SGPOConfig's is {DEFAULTS[name]!r}"
        for number, name, claimed in default_claims(text)
        if claimed != DEFAULTS[name]
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda path: path.name)
def test_stated_defaults_are_the_codes(page):
    assert wrong_defaults(page.read_text()) == []


def test_the_pages_state_defaults_the_check_reads():
    claims = [claim for page in PAGES for claim in default_claims(page.read_text())]
    assert {"improver_loss_weight", "improver_target", "improver_steps"} <= {name for _, name, _ in claims}


@pytest.mark.parametrize(
    "planted",
    [
        "Keep `improver_loss_weight > 0` (default `1.0`) so that",
        "The default `improver_steps=1, dpo_steps=1` alternates",
        '| `improver_target` | Target |\n|---|---|\n| `"interpolate"` (default) | the draft |',
        "`improver_warmup_steps` (the default `0.3`) is a fraction",
        "| `improver_steps`, `dpo_steps` | DPO steps only (default `1`, `1`) | measured |",
        "| `improver_loss_weight` | `1.0` (the default) | measured |",
        "(`improver_target`: `interpolate` by default, or",
        '`improver_format` ... the default stays `"template"`.',
    ],
)
def test_a_planted_wrong_default_is_caught(planted):
    assert wrong_defaults(planted), planted


def test_right_defaults_and_prose_pass():
    text = (
        "Keep `improver_loss_weight > 0` (default `0.3`); the default `improver_steps=0, dpo_steps=1`;\n"
        "`improver_temperature` (default: the same)\n"
        '| `improver_target` | Target |\n|---|---|\n| `"keep_plausible"` (default) | the draft or the reference |'
    )
    assert wrong_defaults(text) == [] and len(default_claims(text)) == 4


# The LoRA rates the command line uses with --use_peft, where the README and the configuration page state them.
LORA_RATE_CLAIMS = {
    "README.md": re.compile(
        r"`--learning_rate (?P<dpo>[\d.e-]+)`, Step 1's `--improver_learning_rate (?P<step1>[\d.e-]+)`"
    ),
    "docs/configuration.md": re.compile(
        r"\| `learning_rate`, LoRA \(`--use_peft`\) \| `(?P<dpo>[\d.e-]+)` for DPO, `improver_learning_rate` "
        r"`(?P<step1>[\d.e-]+)` for Step 1"
    ),
}


def lora_rate_claims(text: str, pattern: re.Pattern) -> list[dict[str, float]]:
    return [
        {"learning_rate": float(m["dpo"]), "improver_learning_rate": float(m["step1"])} for m in pattern.finditer(text)
    ]


@pytest.mark.parametrize("page", sorted(LORA_RATE_CLAIMS))
def test_the_stated_lora_rates_are_the_command_lines(page):
    from trl_sgpo.cli.command import LORA_RATES

    claims = lora_rate_claims((ROOT / page).read_text(), LORA_RATE_CLAIMS[page])
    assert claims and all(claim == LORA_RATES for claim in claims), (page, claims, LORA_RATES)


def test_a_planted_wrong_lora_rate_is_caught():
    from trl_sgpo.cli.command import LORA_RATES

    planted = "validated for LoRA (`--learning_rate 5e-6`, Step 1's `--improver_learning_rate 3e-4`) instead"
    (claim,) = lora_rate_claims(planted, LORA_RATE_CLAIMS["README.md"])  # read, and told apart
    assert claim == {"learning_rate": 5e-6, "improver_learning_rate": 3e-4} and claim != LORA_RATES
