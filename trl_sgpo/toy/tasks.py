"""String tasks with exactly checkable answers, generated from a seed.

A prompt is a list of *operations* (``reverse abc``, ``add 12 7``, ...), joined by ``"; "``. Two regimes:

- ``plain``: one operation per prompt, short answers (<= 24 characters). Here the policy's answer and the
  reference are the same string: there is no distribution shift, and fixing a draft is re-solving it.
- ``shifted``: three operations per prompt, so an answer has three parts and errors are local (fixing one
  part of a draft is easier than writing the whole answer anew). The references are written in another
  surface form than the one the starting policy learned (same content, different form), the way GPT-4
  references differ from a 7B model's answers:

  policy form    ``a) cba; b) ABC; c) 12``
  reference form ``cba | ABC | 12``

The argument space is partitioned into ``train``, ``validation`` and ``test`` by a hash of each argument
string (:func:`split_of`), so the three splits share no argument string across all tasks and regimes.
"""

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass


REGIMES = ("plain", "shifted", "short")
SPLITS = ("train", "validation", "test")
STYLES = ("policy", "reference")
# Percent of the argument space in each split, in the order of ``SPLITS``.
SPLIT_PERCENT = (80, 10, 10)

PLAIN_OPS = ("reverse", "sort", "upper", "add", "count", "repeat", "shift", "devowel")
# ``repeat`` is left out of multi-part prompts: it would make the answers too long for a character-level model.
SHIFTED_OPS = ("reverse", "sort", "upper", "add", "count", "shift", "devowel")
SHIFTED_NUM_PARTS = 3
# ``short``: two operations whose answers are small counts (one or two digits). Every one of them is a skill the
# tiny model can learn in general (``add`` of two-digit numbers was not: the model memorised sums prompt by prompt).
SHORT_OPS = ("count", "length", "vowels", "consonants")
# The operations each regime draws from, and how many (distinct) operations make one prompt.
REGIME_OPS = {"plain": PLAIN_OPS, "shifted": SHIFTED_OPS, "short": SHORT_OPS}
NUM_PARTS = {"plain": 1, "shifted": SHIFTED_NUM_PARTS, "short": 2}
PART_LABELS = "abcdefghij"

# Word lengths of the arguments, per regime (shorter in ``shifted``, where three of them make one prompt).
WORD_LENGTHS = {"plain": (3, 8), "shifted": (3, 6), "short": (3, 9)}
MAX_ADDEND = 99
VOWELS = "aeiou"
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def split_of(argument: str) -> str:
    """Return the split (``train``/``validation``/``test``) an argument string belongs to.

    A stable hash (not Python's salted ``hash``) of the string, so the partition is the same on every machine.
    """
    bucket = int.from_bytes(hashlib.sha256(argument.encode()).digest()[:8], "big") % 100
    upper = 0
    for split, percent in zip(SPLITS, SPLIT_PERCENT):
        upper += percent
        if bucket < upper:
            return split
    raise AssertionError("SPLIT_PERCENT must sum to 100")


def _shift_letter(char: str) -> str:
    return LETTERS[(LETTERS.index(char) + 1) % 26]


# The answer of each operation, a function of its arguments as they appear in the prompt.
ANSWERS: dict[str, Callable[..., str]] = {
    "reverse": lambda word: word[::-1],
    "sort": lambda word: "".join(sorted(word)),
    "upper": lambda word: word.upper(),
    "add": lambda a, b: str(int(a) + int(b)),
    "count": lambda letter, word: str(word.count(letter)),
    "repeat": lambda times, word: word * int(times),
    "shift": lambda word: "".join(_shift_letter(c) for c in word),
    "devowel": lambda word: "".join(c for c in word if c not in VOWELS),
    "length": lambda word: str(len(word)),
    "vowels": lambda word: str(sum(c in VOWELS for c in word)),
    "consonants": lambda word: str(sum(c not in VOWELS for c in word)),
}


@dataclass(frozen=True)
class Operation:
    """One operation of a prompt, e.g. ``Operation("count", ("a", "banana"))``."""

    name: str
    args: tuple[str, ...]

    @property
    def text(self) -> str:
        """The operation as it appears in the prompt, e.g. ``count a banana``."""
        return " ".join((self.name, *self.args))

    @property
    def answer(self) -> str:
        return ANSWERS[self.name](*self.args)

    @property
    def split_key(self) -> str:
        """The argument string whose hash decides the split (the word; for ``add`` the unordered pair)."""
        if self.name == "add":
            return "+".join(sorted(self.args, key=int))
        return self.args[-1]


@dataclass(frozen=True)
class Example:
    """A prompt (one or more operations) with its answer parts."""

    regime: str
    operations: tuple[Operation, ...]

    @property
    def prompt(self) -> str:
        return "; ".join(op.text for op in self.operations)

    @property
    def answer_parts(self) -> list[str]:
        return [op.answer for op in self.operations]

    @property
    def task(self) -> str:
        """The task name: the operation for ``plain`` prompts, ``multi`` for several operations."""
        return self.operations[0].name if len(self.operations) == 1 else "multi"

    def answer(self, style: str) -> str:
        """The answer written in the ``policy`` or the ``reference`` surface form."""
        return format_answer(self.answer_parts, style)


def format_answer(parts: list[str], style: str) -> str:
    """Write answer parts in a surface form. A single part is written bare in both forms."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if len(parts) == 1:
        return parts[0]
    if style == "policy":
        return "; ".join(f"{label}) {part}" for label, part in zip(PART_LABELS, parts))
    return " | ".join(parts)


def _sample_word(rng: random.Random, regime: str, split: str) -> str:
    low, high = WORD_LENGTHS[regime]
    while True:
        word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(low, high)))
        if split_of(word) == split:
            return word


def _sample_operation(rng: random.Random, name: str, regime: str, split: str) -> Operation:
    """Sample the arguments of one operation, by rejection, until its split key falls in ``split``."""
    while True:
        if name == "add":
            args = (str(rng.randint(0, MAX_ADDEND)), str(rng.randint(0, MAX_ADDEND)))
        else:
            word = _sample_word(rng, regime, split)
            if name == "count":
                # Mostly a letter of the word; sometimes any letter, so that 0 is a possible answer.
                letter = rng.choice(word) if rng.random() < 0.75 else rng.choice(LETTERS)
                args = (letter, word)
            elif name == "repeat":
                args = (str(rng.randint(2, 3)), word)
            elif name == "devowel" and all(c in VOWELS for c in word):
                continue  # an empty answer cannot be checked against a missing one
            else:
                args = (word,)
        operation = Operation(name, args)
        if split_of(operation.split_key) == split:
            return operation


def generate_examples(regime: str, split: str, num_examples: int, seed: int = 0) -> list[Example]:
    """Generate ``num_examples`` distinct examples of ``regime`` from ``split``'s argument space.

    Deterministic in ``(regime, split, num_examples, seed)``. In ``plain`` the tasks are balanced (round robin
    over ``PLAIN_OPS``); in ``shifted`` each prompt draws ``SHIFTED_NUM_PARTS`` distinct operations.
    """
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"trl_sgpo.toy/{regime}/{split}/{seed}")
    examples: list[Example] = []
    seen: set[str] = set()
    for _ in range(100 * num_examples + 1000):
        if len(examples) == num_examples:
            break
        if NUM_PARTS[regime] == 1:  # balanced tasks: round robin over the operations
            names = [REGIME_OPS[regime][len(examples) % len(REGIME_OPS[regime])]]
        else:
            names = rng.sample(REGIME_OPS[regime], NUM_PARTS[regime])
        example = Example(regime, tuple(_sample_operation(rng, name, regime, split) for name in names))
        if example.prompt not in seen:
            seen.add(example.prompt)
            examples.append(example)
    else:
        raise ValueError(f"could not draw {num_examples} distinct {regime} prompts from the {split} split")
    rng.shuffle(examples)
    return examples
