"""Check answers of the toy world by content, not by surface form.

An answer is parsed into parts: split on ``;`` or ``|``, strip whitespace and an optional ``a)`` style label.
So the policy form (``a) cba; b) ABC``), the reference form (``cba | ABC``) and a mix of the two (what an
edit half way from one form to the other looks like) all read as the same parts. Part ``i`` of an answer is
right when it equals part ``i`` of the gold answer; the answer is an exact match when it has exactly the gold
parts. Partial credit is the number of right parts over the number of gold parts, or of parsed parts where there
are more (extra parts count as wrong, so appending guesses cannot raise the credit).
The parsing is unambiguous because no gold part contains ``;``, ``|`` or ``)``.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass


_SEPARATORS = re.compile(r"[;|]")
_LABEL = re.compile(r"^[a-z]\)\s*")
_POLICY_FORM = re.compile(r"^a\) [^;|)]*(; [b-j]\) [^;|)]*)+$")
_REFERENCE_FORM = re.compile(r"^[^;|)]*( \| [^;|)]*)+$")


@dataclass(frozen=True)
class Check:
    """The verdict on one answer: exact match, and which of the gold parts it got right."""

    exact_match: bool
    part_correct: tuple[bool, ...]  # one entry per gold part
    num_parts: int  # gold parts, or parsed parts where there are more

    @property
    def partial_credit(self) -> float:
        """Fraction of the parts that are right (1.0 exactly on an exact match)."""
        return sum(self.part_correct) / self.num_parts


def parse_parts(text: str) -> list[str]:
    """Parse an answer in either surface form (or a mix of them) into its parts."""
    text = text.strip()
    if not text:
        return []
    return [_LABEL.sub("", piece.strip()).strip() for piece in _SEPARATORS.split(text)]


def detect_style(text: str) -> str:
    """Name the surface form of a multi-part answer: ``policy``, ``reference`` or ``other`` (mixed, broken)."""
    text = text.strip()
    if _POLICY_FORM.match(text):
        return "policy"
    if _REFERENCE_FORM.match(text):
        return "reference"
    return "other"


def check_answer(text: str, gold_parts: Sequence[str]) -> Check:
    """Check one answer against the gold parts."""
    parts = parse_parts(text)
    return Check(
        exact_match=parts == list(gold_parts),
        part_correct=tuple(i < len(parts) and parts[i] == gold for i, gold in enumerate(gold_parts)),
        num_parts=max(len(gold_parts), len(parts)),
    )
