"""A verifiable instruction-following task for a real instruct model (the benchmark of benchmarks/real_quality.py).

Each prompt is a simple request the model knows how to answer ("Name a fruit.", "List some animals.") with one or two
constraints appended, in the spirit of IFEval, each checked by code:

- ``lowercase`` / ``uppercase``: the whole answer in lower / capital letters;
- ``end_word``: the answer's last word is a given one;
- ``quotes``: the whole answer wrapped in double quotes;
- ``items``: exactly N items separated by commas (list requests only);
- ``keyword``: the answer contains a given word;
- ``no_commas``: no comma anywhere in the answer. The *held-out family*: no training, validation or test prompt
  has it; only the second test set does, to see whether what is learned carries over. It was chosen so that the
  start solves it some of the time (a single item needs no comma, a list of them usually gets commas); the first
  held-out family, ``start_word``, sat at 0% for every arm and so could show no transfer either way.

An answer is correct when it satisfies every constraint of its prompt and answers the request (names at least one
item of the asked category). Partial credit is the share of those checks it passes (the oracle's reward).

The checkers are written here rather than taken from IFEval's (the `if-verifiable` wheel): those load nltk's punkt
data, a download, and the constraints used here need only a tokenizer of words.

The splits are disjoint in prompt text, drawn from one seeded shuffle of every distinct prompt. The SFT references
satisfy their constraints, except a share (``IMPERFECT_SHARE``) that misses exactly one, as real SFT data do.
"""

import random
import re
from dataclasses import dataclass
from itertools import combinations


CATEGORIES: dict[str, tuple[str, list[str]]] = {  # category -> (plural, items that count as answering it)
    "fruit": ("fruits", ["apple", "banana", "orange", "grape", "mango", "pear", "cherry", "peach", "lemon", "plum"]),
    "color": ("colors", ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "brown"]),
    "animal": ("animals", ["dog", "cat", "horse", "lion", "tiger", "elephant", "rabbit", "cow", "bear", "monkey"]),
    "vegetable": ("vegetables", ["carrot", "potato", "onion", "tomato", "pea", "cabbage", "spinach", "lettuce"]),
    "country": ("countries", ["france", "spain", "japan", "china", "india", "brazil", "canada", "italy", "germany"]),
    "sport": ("sports", ["soccer", "tennis", "golf", "basketball", "baseball", "football", "swimming", "hockey"]),
    "instrument": ("instruments", ["piano", "guitar", "violin", "drum", "drums", "flute", "trumpet", "cello"]),
    "planet": ("planets", ["mercury", "venus", "earth", "mars", "jupiter", "saturn", "uranus", "neptune"]),
    "drink": ("drinks", ["water", "milk", "tea", "coffee", "juice", "soda", "lemonade", "cocoa"]),
    "flower": ("flowers", ["rose", "tulip", "daisy", "lily", "sunflower", "orchid", "violet", "lavender"]),
    "bird": ("birds", ["eagle", "sparrow", "robin", "owl", "parrot", "penguin", "crow", "pigeon", "duck"]),
    "metal": ("metals", ["iron", "gold", "silver", "copper", "aluminum", "tin", "lead", "zinc", "steel"]),
}
END_WORDS = ("done", "thanks", "indeed", "now", "friend")
KEYWORDS = ("nice", "simple", "common", "good", "great")
ITEM_COUNTS = (2, 3, 4)
TRAIN_FAMILIES = ("lowercase", "uppercase", "end_word", "quotes", "items", "keyword")
HELD_OUT_FAMILY = "no_commas"
CONFLICTS = {frozenset({"lowercase", "uppercase"}), frozenset({"items", "no_commas"})}  # items: comma-separated
IMPERFECT_SHARE = 0.2  # share of SFT references that miss exactly one of their constraints
SPLIT_SIZES = {"train": 1900, "validation": 96, "test": 160}  # of the 2184 distinct prompts; the benchmark uses a part
HELD_OUT_SIZE = 96
WORD = re.compile(r"[A-Za-z']+")


@dataclass(frozen=True)
class Constraint:
    family: str
    value: str | int | None = None

    def instruction(self) -> str:
        return {
            "lowercase": "Write your whole answer in lowercase letters.",
            "uppercase": "Write your whole answer in capital letters.",
            "end_word": f"End your answer with the word '{self.value}'.",
            "quotes": "Wrap your whole answer in double quotes.",
            "items": f"Give exactly {self.value} items, separated by commas.",
            "keyword": f"Use the word '{self.value}' in your answer.",
            "no_commas": "Do not use any commas in your answer.",
        }[self.family]

    def holds(self, answer: str) -> bool:
        """Whether ``answer`` satisfies this constraint."""
        text = answer.strip()
        words = [word.lower() for word in WORD.findall(text)]
        letters = [c for c in text if c.isalpha()]
        if self.family == "lowercase":
            return bool(letters) and all(c.islower() for c in letters)
        if self.family == "uppercase":
            return bool(letters) and all(c.isupper() for c in letters)
        if self.family == "end_word":
            return bool(words) and words[-1] == self.value
        if self.family == "no_commas":
            return "," not in text
        if self.family == "quotes":
            return len(text) >= 2 and text[0] == '"' and text[-1] == '"' and '"' not in text[1:-1]
        if self.family == "items":
            items = [item.strip(' ."') for item in text.strip('"').split(",")]
            return len(items) == self.value and all(items)
        if self.family == "keyword":
            return self.value in words
        raise ValueError(f"unknown constraint family {self.family!r}")


@dataclass(frozen=True)
class Prompt:
    category: str
    plural: bool  # a list request ("List some fruits.") rather than a single one ("Name a fruit.")
    constraints: tuple[Constraint, ...]

    @property
    def request(self) -> str:
        plural_name = CATEGORIES[self.category][0]
        article = "an" if self.category[0] in "aeiou" else "a"
        return f"List some {plural_name}." if self.plural else f"Name {article} {self.category}."

    @property
    def text(self) -> str:
        return " ".join([self.request, *(c.instruction() for c in self.constraints)])

    def answers_request(self, answer: str) -> bool:
        """The answer names at least one item of the asked category."""
        words = {word.lower() for word in WORD.findall(answer)}
        return bool(words & set(CATEGORIES[self.category][1]))

    def checks(self, answer: str) -> list[bool]:
        """One verdict per check: answering the request, then each constraint."""
        return [self.answers_request(answer), *(c.holds(answer) for c in self.constraints)]

    def correct(self, answer: str) -> bool:
        return all(self.checks(answer))

    def partial_credit(self, answer: str) -> float:
        verdicts = self.checks(answer)
        return sum(verdicts) / len(verdicts)


def _constraint_values(family: str, plural: bool) -> list[Constraint]:
    values = {"end_word": END_WORDS, "keyword": KEYWORDS, "items": ITEM_COUNTS}
    if family == "items" and not plural:
        return []
    return [Constraint(family, value) for value in values.get(family, (None,))]


def all_prompts(families: tuple[str, ...]) -> list[Prompt]:
    """Every distinct prompt with one or two constraints of ``families`` (no conflicting pair, no family twice)."""
    prompts = []
    for category in CATEGORIES:
        for plural in (False, True):
            options = [c for family in families for c in _constraint_values(family, plural)]
            prompts += [Prompt(category, plural, (c,)) for c in options]
            for a, b in combinations(options, 2):
                if a.family != b.family and frozenset({a.family, b.family}) not in CONFLICTS:
                    prompts.append(Prompt(category, plural, (a, b)))
    return prompts


def _apply(constraint: Constraint, answer: str) -> str:
    """``answer`` changed so that it satisfies ``constraint`` (applied in the order of ``_ORDER``)."""
    if constraint.family == "lowercase":
        return answer.lower()
    if constraint.family == "uppercase":
        return answer.upper()
    if constraint.family == "end_word":
        return f"{answer.rstrip('.')} {constraint.value}."
    if constraint.family == "no_commas":
        return answer.replace(", ", " and ")
    if constraint.family == "keyword":
        return f"{answer.rstrip('.')}, a {constraint.value} one."
    if constraint.family == "quotes":
        return f'"{answer}"'
    raise ValueError(constraint.family)


# Content first (items, then the words around it), then the case, then the quotes around everything.
_ORDER = ("items", "keyword", "no_commas", "end_word", "lowercase", "uppercase", "quotes")


def reference(prompt: Prompt, rng: random.Random, miss: str | None = None) -> str:
    """An SFT answer to ``prompt`` that satisfies its constraints, except the family ``miss`` if given."""
    items = CATEGORIES[prompt.category][1]
    if prompt.plural:
        count = next((c.value for c in prompt.constraints if c.family == "items"), 3)
        if miss == "items":
            count += 1
        if _keyword(prompt) and miss != "keyword":  # "..., cherry are nice.": the keyword adds no comma item
            answer = ", ".join(rng.sample(items, count)).capitalize() + f" are {_keyword(prompt)}."
        else:
            answer = ", ".join(rng.sample(items, count)).capitalize() + "."
    else:
        answer = f"{rng.choice(items).capitalize()}."
        if _keyword(prompt) and miss != "keyword":
            answer = f"{answer.rstrip('.')} is {_keyword(prompt)}."
    for family in _ORDER:
        for constraint in prompt.constraints:
            if constraint.family == family and family not in ("items", "keyword") and family != miss:
                answer = _apply(constraint, answer)
    return answer


def _keyword(prompt: Prompt) -> str | None:
    return next((str(c.value) for c in prompt.constraints if c.family == "keyword"), None)


@dataclass(frozen=True)
class Row:
    prompt: Prompt
    reference: str
    imperfect: bool


def make_splits(seed: int = 0) -> dict[str, list[Row]]:
    """The task's splits: ``train`` (the SFT set), ``validation``, ``test`` and ``held_out`` (only the held-out
    family, in every prompt), disjoint in prompt text; every row with its SFT reference."""
    rng = random.Random(seed)
    prompts = all_prompts(TRAIN_FAMILIES)
    rng.shuffle(prompts)
    splits, start = {}, 0
    for name, size in SPLIT_SIZES.items():
        if start + size > len(prompts):
            raise ValueError(f"SPLIT_SIZES asks for more than the task's {len(prompts)} distinct prompts")
        splits[name] = prompts[start : start + size]
        start += size
    held_out = [p for p in all_prompts((*TRAIN_FAMILIES, HELD_OUT_FAMILY)) if HELD_OUT_FAMILY in _families(p)]
    rng.shuffle(held_out)
    splits["held_out"] = held_out[:HELD_OUT_SIZE]
    rows = {}
    for name, split in splits.items():
        rows[name] = []
        for prompt in split:
            imperfect = name == "train" and rng.random() < IMPERFECT_SHARE
            miss = rng.choice(_families(prompt)) if imperfect else None
            rows[name].append(Row(prompt, reference(prompt, rng, miss), imperfect))
    return rows


def _families(prompt: Prompt) -> list[str]:
    return [c.family for c in prompt.constraints]


def conversational(rows: list[Row]) -> list[dict]:
    """The rows as TRL's conversational prompt-completion records, with the checker's inputs as a JSON column."""
    import json

    return [
        {
            "prompt": [{"role": "user", "content": row.prompt.text}],
            "completion": [{"role": "assistant", "content": row.reference}],
            "task": json.dumps(_serialise(row.prompt)),
        }
        for row in rows
    ]


def _serialise(prompt: Prompt) -> dict:
    return {
        "category": prompt.category,
        "plural": prompt.plural,
        "constraints": [[c.family, c.value] for c in prompt.constraints],
    }


def prompt_from_json(data: dict) -> Prompt:
    """The inverse of the ``task`` column of :func:`conversational`."""
    constraints = tuple(Constraint(family, value) for family, value in data["constraints"])
    return Prompt(data["category"], data["plural"], constraints)
