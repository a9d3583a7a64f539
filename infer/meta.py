"""meta.json, the contract between export and the runtime: read (with validation) and written here only.

Export writes a ModelMeta into each model folder; the runtime and the benchmarks read it back. The fields the
runtime acts on are typed; the rest (label mapping, training data record, notes, figures) travel in `extra` as
written, so a newer export's additions survive an older reader.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from tsinfer.infer.labels import BINARY, MAX_CLASSES, LabelSet

META_FILE = "meta.json"
KINDS = ("bert", "svc")
DEFAULT_MAX_LENGTH = 128  # a BERT folder written before meta.json named its max_length


class ModelError(Exception):
    """A model folder cannot be used: the message names the file and the fix."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _labels_problem(labels, mapping) -> str | None:
    """What is wrong with meta.json's classes (2 to MAX_CLASSES distinct names) and label_mapping, if anything."""
    if (not isinstance(labels, list) or not 2 <= len(labels) <= MAX_CLASSES
            or not all(isinstance(n, str) and n for n in labels) or len(set(labels)) < len(labels)):
        return f"labels {labels!r}: a model has 2 to {MAX_CLASSES} distinct class names"
    if mapping is not None and not (isinstance(mapping, dict) and set(mapping.values()) <= set(labels)):
        return f"label_mapping {mapping!r} names classes that are not among labels {labels!r}"
    return None


@dataclass(frozen=True)
class ModelMeta:
    """One model folder's meta.json."""

    kind: str  # "bert" or "svc"
    files: dict[str, str]  # precision -> ONNX file in the folder
    openvino_files: dict[str, str] = field(default_factory=dict)  # precision -> OpenVINO .xml (weights: same stem .bin)
    providers: dict[str, list[str]] = field(default_factory=dict)  # precision -> providers that run it
    default_precision: dict[str, str] = field(default_factory=dict)  # provider -> precision
    labels: list[str] = field(default_factory=lambda: list(BINARY.names))  # class names, in the model's output order
    max_length: int | None = None  # BERT: tokens per row at most
    temperature: float | None = None  # BERT: the logits are divided by it before the softmax
    text_normalization: str | None = None  # infer/preprocess.py's name; None: texts as they are
    cuda_options: dict | None = None  # BERT: the CUDA provider's options its GPU layout needs
    sha256: dict[str, str] = field(default_factory=dict)  # every other file of the folder
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict, *, where: str = META_FILE) -> ModelMeta:
        """Checked: a ModelError names `where` and what is wrong."""
        known = {f.name for f in fields(cls)} - {"extra"}
        given = {"kind": None, "files": None} | {k: v for k, v in data.items() if k in known}
        meta = cls(**given, extra={k: v for k, v in data.items() if k not in known})
        problem = _problem(meta)
        if problem:
            raise ModelError(f"{where}: {problem}: re-run `make export`")
        if meta.kind == "bert" and meta.max_length is None:
            meta = replace(meta, max_length=DEFAULT_MAX_LENGTH)
        return meta

    def label_set(self) -> LabelSet:
        """The classes in output order and the label values naming them (LabelSet.from_mapping)."""
        return LabelSet.from_mapping(self.labels, self.extra.get("label_mapping"))

    def named_files(self) -> list[str]:
        """Every file meta.json names: the model files (an OpenVINO .xml with its .bin) and the hashed ones."""
        return [*self.model_files(), *self.sha256]

    def model_files(self) -> list[str]:
        """The model graphs: each precision's ONNX file and each OpenVINO .xml with its weights (.bin)."""
        names = list(self.files.values())
        for xml in self.openvino_files.values():
            names += self.graph_files(xml)
        return names

    def graph_files(self, name) -> list:
        """The files one model graph is read from: an ONNX file alone, an OpenVINO .xml with its .bin beside it."""
        if isinstance(name, str) and name in self.openvino_files.values():
            return [name, str(Path(name).with_suffix(".bin"))]
        return [name]

    def check_inside(self, folder: Path) -> None:
        """Every named file, symlinks followed, must resolve inside the folder: onnxruntime holds external-data
        paths to the same rule, and a received folder must not make tsinfer open any file on the machine."""
        root = folder.resolve()
        for name in self.named_files():
            target = (folder / name).resolve()
            if target != root and root not in target.parents:
                raise ModelError(f"{folder / META_FILE}: {name!r} resolves to {target}, outside the model folder "
                                 "(a symlink or path out of it): do not use this folder, or re-run `make export`")

    @classmethod
    def read(cls, folder: str | Path, *, verify: bool = True) -> ModelMeta:
        """The folder's meta.json; with `verify`, every file it lists must match its sha256."""
        folder = Path(folder)
        path = folder / META_FILE
        if not folder.is_dir():
            raise ModelError(f"model folder not found: {folder} (run `make export`, or pass --model DIR)")
        if not path.exists():
            raise ModelError(f"{path} is missing: this is not an exported model folder (run `make export`)")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelError(f"{path} is not valid JSON ({e}): re-run `make export`") from e
        if not isinstance(data, dict):
            raise ModelError(f"{path} is not a JSON object: re-run `make export`")
        meta = cls.from_dict(data, where=str(path))
        meta.check_inside(folder)
        if verify:
            meta.verify(folder)
        return meta

    def unhashed(self) -> list[str]:
        """The model files meta.json names without a sha256: nothing proves they are the ones exported."""
        return [name for name in self.named_files() if name not in self.sha256]

    def verify(self, folder: Path, *, reads: list[str] | None = None) -> None:
        """Every model file must have a sha256 and every hashed file must match it. reads: the model files a run
        will open (graph_files); the folder's other model graphs are then left unhashed, since a run reads one
        graph and hashing the others (the larger part of a BERT folder) only cost its load time."""
        unread = set() if reads is None else set(self.model_files()) - set(reads)
        for name, digest in self.sha256.items():
            if name in unread:
                continue
            path = folder / name
            if not path.exists():
                raise ModelError(f"{path} is missing (listed in meta.json): re-run `make export`")
            if sha256_file(path) != digest:
                raise ModelError(f"{path} does not match its sha256 in meta.json (corrupt or changed): "
                                 "re-run `make export`, or pass --no-verify to load it anyway")
        missing = [name for name in self.unhashed() if name not in unread]
        if missing:
            raise ModelError(f"{folder / META_FILE} has no sha256 for {', '.join(missing)}, so it cannot be "
                             "verified: re-run `make export`, or pass --no-verify if you trust where it came from")

    def to_dict(self) -> dict:
        """meta.json's object: typed fields (unset optional ones left out), then `extra`, then sha256 last."""
        optional = {"max_length", "temperature", "text_normalization", "cuda_options"}
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "sha256")
               and not (f.name in optional and getattr(self, f.name) is None)
               and not (f.name == "openvino_files" and not self.openvino_files)}  # written only when exported
        return {**out, **self.extra, "sha256": self.sha256}

    def write(self, folder: str | Path) -> ModelMeta:
        """meta.json with the sha256 of every other file in the folder, so that the runtime can verify them;
        returns the meta as written."""
        folder = Path(folder)
        files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != META_FILE)
        written = replace(self, sha256={name: sha256_file(folder / name) for name in files})
        (folder / META_FILE).write_text(json.dumps(written.to_dict(), indent=2) + "\n")
        return written


def _problem(meta: ModelMeta) -> str | None:
    """What is wrong with a meta.json's fields, if anything (ModelMeta.from_dict raises it as a ModelError)."""
    if meta.kind not in KINDS:
        return f"unknown model kind {meta.kind!r} (expected 'bert' or 'svc')"
    if not isinstance(meta.files, dict) or not meta.files:
        return "no model files listed under 'files'"
    if meta.max_length is not None and (not isinstance(meta.max_length, int) or meta.max_length < 1):
        return f"max_length {meta.max_length!r} is not a positive integer"
    if meta.temperature is not None and not (isinstance(meta.temperature, (int, float)) and meta.temperature > 0):
        return f"temperature {meta.temperature!r} is not a positive number"
    if _labels_problem(meta.labels, meta.extra.get("label_mapping")):
        return _labels_problem(meta.labels, meta.extra.get("label_mapping"))
    if not isinstance(meta.openvino_files, dict) or not isinstance(meta.sha256, dict):
        return "'openvino_files' and 'sha256' must be JSON objects"
    bad = [name for name in meta.named_files() if not isinstance(name, str) or not name
           or Path(name).is_absolute() or ".." in Path(name).parts]
    if bad:
        return f"file name {bad[0]!r} leaves the model folder (names must be relative, without '..')"
    return None
