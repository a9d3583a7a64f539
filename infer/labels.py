"""A model's classes: their names in index order and the label values every reader maps to them.

Binary sentiment keeps the mapping tsinfer always had: 0/1, 0/4 (Sentiment140) and negative/positive, in any case,
to negative (0) and positive (1). Any other label set comes from the training data (`LabelSet.from_values`), in
one documented order, so that training, meta.json and the written columns agree:

- values that all belong to the binary mapping: the binary label set above;
- values that are all integers: sorted as numbers, named as written without sign or leading zeros ("0", "1", "2");
- words: sorted alphabetically after case-folding ("negative", "neutral", "positive"), named in lower case.

Sorted, not first-seen: the order never depends on which row came first (a shuffled file trains the same
classes), and it is the order of sklearn's `classes_`. Values are compared after stripping spaces, in any case.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

MAX_CLASSES = 20  # the streaming metrics hold two score histograms per class (8 MB each)
_INTEGER = re.compile(r"[+-]?\d+")


def label_key(value: str) -> str:
    """How a label value is compared: spaces stripped, lower case."""
    return value.strip().lower()


@dataclass(frozen=True)
class LabelSet:
    """names[i] is class i; aliases maps a label value (label_key) to its class index."""

    names: tuple[str, ...]
    aliases: dict[str, int] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if not self.aliases:
            object.__setattr__(self, "aliases", {label_key(n): i for i, n in enumerate(self.names)})

    def __len__(self) -> int:
        return len(self.names)

    @property
    def binary(self) -> bool:
        """Two classes: scored and written as tsinfer always did (pred 0/1, score = P(class 1))."""
        return len(self.names) == 2

    def index(self, value: str) -> int | None:
        """The class index of a label value; None for a value outside the set."""
        return self.aliases.get(label_key(value))

    def accepted(self) -> str:
        """The values accepted, as a reject's reason names them."""
        if self.names == BINARY.names and self.aliases == BINARY.aliases:
            return "0/1, 0/4 or negative/positive"
        return "one of " + ", ".join(self.names)

    def mapping(self) -> dict[str, str]:
        """{label value: class name}: meta.json's and training_data.json's label_mapping."""
        return {value: self.names[index] for value, index in self.aliases.items()}

    @classmethod
    def from_mapping(cls, names: Iterable[str], mapping: dict[str, str] | None) -> LabelSet:
        """The label set meta.json records (labels and label_mapping); the binary one for an older binary folder
        without a mapping."""
        names = tuple(names)
        if not mapping:
            return BINARY if names == BINARY.names else cls(names)
        position = {name: i for i, name in enumerate(names)}
        aliases = {label_key(value): position[name] for value, name in mapping.items() if name in position}
        return cls(names, {**{label_key(n): i for i, n in enumerate(names)}, **aliases})

    @classmethod
    def from_values(cls, values: Iterable[str]) -> LabelSet:
        """The label set of training data whose label values are `values`, in the module's documented order.
        ValueError for numbers mixed with words, or more than MAX_CLASSES classes."""
        keys = sorted({label_key(v) for v in values} - {""})
        if all(k in BINARY.aliases for k in keys):
            return BINARY
        numbers = [k for k in keys if _INTEGER.fullmatch(k)]
        if numbers and len(numbers) < len(keys):
            raise ValueError(f"labels mix numbers and words ({', '.join(keys[:8])}): use one kind")
        if numbers:
            names = tuple(dict.fromkeys(str(n) for n in sorted(int(k) for k in keys)))
            aliases = {k: names.index(str(int(k))) for k in keys}
        else:
            names = tuple(keys)
            aliases = {}
        if len(names) > MAX_CLASSES:
            raise ValueError(f"{len(names)} classes ({', '.join(names[:8])}, ...): at most {MAX_CLASSES}")
        return cls(names, aliases)


BINARY = LabelSet(("negative", "positive"), {"0": 0, "1": 1, "4": 1, "negative": 0, "positive": 1})


class CollectedLabels(LabelSet):
    """Every non-empty value accepted, each new one a new class in first-seen order: the training reader's first
    pass, after which `LabelSet.from_values(collected.names)` gives the documented order."""

    def __init__(self):
        super().__init__((), {})
        object.__setattr__(self, "names", [])

    def index(self, value: str) -> int | None:
        key = label_key(value)
        if not key:
            return None
        if key not in self.aliases:
            self.aliases[key] = len(self.names)
            self.names.append(key)
        return self.aliases[key]
