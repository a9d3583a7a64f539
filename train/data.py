"""The seed's data split, shared by both trainers: 90/10 of dev.tsv with random_state=213; test.tsv is the holdout."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sklearn.model_selection import train_test_split

from tsinfer.infer.reader import read_all

SPLIT_SEED = 213
VAL_FRACTION = 0.1


@dataclass
class Texts:
    texts: list[str]
    labels: list[int]

    def head(self, n: int | None) -> "Texts":
        return self if n is None else Texts(self.texts[:n], self.labels[:n])


def _labelled(path: Path) -> Texts:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make data` first")
    rows = read_all(path)
    if rows.rejects:
        first = rows.rejects[0]
        raise ValueError(f"{path}: {len(rows.rejects)} unreadable rows (line {first.line}: {first.reason})")
    if min(rows.labels) < 0:
        raise ValueError(f"{path}: training data needs a label on every row")
    return Texts(rows.texts, rows.labels)


def dev_split(data_dir: str | Path) -> tuple[Texts, Texts]:
    dev = _labelled(Path(data_dir) / "dev.tsv")
    x_tr, x_val, y_tr, y_val = train_test_split(
        dev.texts, dev.labels, test_size=VAL_FRACTION, random_state=SPLIT_SEED
    )
    return Texts(x_tr, y_tr), Texts(x_val, y_val)


def holdout(data_dir: str | Path) -> Texts:
    return _labelled(Path(data_dir) / "test.tsv")
