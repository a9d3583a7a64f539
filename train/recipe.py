"""The BERT fine-tuning recipe: its hyperparameters, the presets, and which of them the command line offers.

Torch-free, so that `tsinfer train bert --help`, its option checks and the presets need no training stack. The
command's options are generated from BertRecipe's fields (tsinfer.cli.train), so a new hyperparameter is added here
once.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping

from tsinfer.infer.preprocess import TEXT_NORMALIZATION
from tsinfer.train.errors import TrainError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # train/precision.py chooses among them
RAW_TEXT = "none"  # the command line's name for training on the raw texts (text_normalization None)


@dataclass(frozen=True)
class Option:
    """How the command line offers a field: its flag, value type, bounds or choices, and help."""

    flag: str
    type: type = float
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    choices: tuple[str, ...] | None = None
    help: str = ""


def _offered(default, flag: str, **option):
    return field(default=default, metadata={"option": Option(flag, **option)})


@dataclass(frozen=True)
class BertRecipe:
    """The hyperparameters of one fine-tuning run. The defaults are the notebook's recipe (preset "seed")."""

    learning_rate: float = _offered(2e-5, "--lr", help="Peak learning rate (AdamW, linear schedule).")
    epochs: float = _offered(4, "--epochs", help="Training epochs (fractions allowed).")
    batch_size: int = _offered(32, "--batch-size", type=int, min=1, help="Rows per batch and process.")
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    max_length: int = _offered(128, "--max-length", type=int, min=8, help="Tokens per row at most.")
    # the tweet normalisation of infer/preprocess.py, applied at training and scoring alike; None: the raw texts
    text_normalization: str | None = _offered(
        TEXT_NORMALIZATION, "--text-normalization", type=str, choices=(TEXT_NORMALIZATION, RAW_TEXT),
        help="Text normalisation before the tokenizer, at training and scoring alike.")
    label_smoothing: float = _offered(0.0, "--label-smoothing", min=0, max=1, max_open=True,
                                      help="Label smoothing of the cross-entropy.")
    # 1.0: one learning rate for every layer
    layer_decay: float = _offered(1.0, "--layer-decay", min=0, max=1, min_open=True,
                                  help="Layer-wise learning-rate decay per encoder layer, from the top (1: none).")
    # weights averaged over that many evenly spaced steps of the last epoch, kept when validation prefers them
    average_last: int = _offered(0, "--average-last", type=int, min=0,
                                 help="Average the weights at N evenly spaced steps of the last epoch; kept if "
                                      "validation prefers it (0: off).")

    # distillation (train/distill.py), used only with teacher targets: the softmax temperature of both sides and
    # the soft term's weight against the labels' cross-entropy
    distill_temperature: float = _offered(2.0, "--distill-temperature", min=0, min_open=True,
                                          help="Distillation: softmax temperature of teacher and student.")
    distill_alpha: float = _offered(0.9, "--distill-alpha", min=0, max=1,
                                    help="Distillation: weight of the teacher's soft targets (1 - it: the labels).")

    def overridden(self, changes: Mapping[str, Any] | None) -> BertRecipe:
        """This recipe with `changes` applied; a None value leaves its field as it is."""
        given = {name: value for name, value in (changes or {}).items() if value is not None}
        unknown = sorted(set(given) - {f.name for f in fields(self)})
        if unknown:
            raise TrainError(f"unknown hyperparameter {', '.join(unknown)}: a BERT recipe has "
                             f"{', '.join(f.name for f in fields(self))}")
        if given.get("text_normalization") == RAW_TEXT:
            given["text_normalization"] = None
        return replace(self, **given)

    def to_dict(self) -> dict:
        return asdict(self)


# "seed" is the notebook's recipe (bert-base-uncased); "minilm" is what the small offline default needs: a higher
# learning rate with a short warm-up, layer-wise learning-rate decay and the last epoch's weight average as a
# candidate (RECIPES.md has the runs behind it, each chosen on validation).
PRESETS = {
    "seed": BertRecipe(),
    "minilm": BertRecipe(learning_rate=8e-5, epochs=2, warmup_ratio=0.06, weight_decay=0.01, layer_decay=0.9,
                         average_last=4),
}


def offered_fields() -> list[tuple[str, Option]]:
    """(field name, Option) of every hyperparameter the command line offers, in the recipe's order."""
    return [(f.name, f.metadata["option"]) for f in fields(BertRecipe) if "option" in f.metadata]


def preset_values(name: str) -> str:
    """The field's value in each preset, for --help: one value when they agree."""
    values = {preset: getattr(recipe, name) for preset, recipe in PRESETS.items()}
    shown = {preset: RAW_TEXT if v is None else v for preset, v in values.items()}
    if len(set(shown.values())) == 1:
        return str(next(iter(shown.values())))
    return ", ".join(f"{preset} {v}" for preset, v in shown.items())
