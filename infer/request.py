"""What a score run needs, as one typed request built at the edge (the CLI, `tsinfer.score_file`) and passed whole
to the engines (infer/score.py, infer/ray_engine.py); it is checked here, once, on construction."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

from tsinfer.infer.models import ScorerSettings
from tsinfer.infer.rows import Columns, InputError

ENGINES = ("local", "ray")
LOCAL_FORMATS = ("tsv", "jsonl")
RAY_FORMATS = ("parquet", "tsv")


class RequestError(InputError):
    """Options that do not go together (an engine and an option it does not have)."""


@dataclass(frozen=True)
class OutputSpec:
    """Where the run writes. path: the predictions file ('-' for stdout), or the Ray engine's folder; rejects: the
    rows that cannot be read (None: counted, not written; see rejects_beside); metrics JSON and ROC PNG if given."""

    path: str = "-"
    fmt: str = "tsv"
    rejects: str | None = None
    metrics: str | None = None
    roc: str | None = None

    def __post_init__(self):
        for name in ("path", "rejects", "metrics", "roc"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, os.fspath(getattr(self, name)))


@dataclass(frozen=True)
class RunOptions:
    """How the input is read and the run proceeds (chunk_rows None: the provider's default)."""

    chunk_rows: int | None = None
    input_format: str = "auto"
    columns: Columns = Columns()
    sort: bool = True       # rows sorted by length inside a chunk (the batches; never the output's order)
    strict: bool = False    # stop at the first row that cannot be read
    resume: bool = False    # continue an interrupted run on the same output
    progress: bool = False  # a bar on stderr


@dataclass(frozen=True)
class RayOptions:
    """The Ray engine's cluster and actors (num_cpus: a local Ray's CPUs, else the CPUs this process may use)."""

    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    num_cpus: int | None = None
    connect_timeout_s: float = 15.0


@dataclass(frozen=True)
class ScoreRequest:
    """One score run: inputs and models (paths, kept as given), the output, how the models run, how the run
    proceeds, and the engine. Construction normalises the paths to strings and checks that the options go together
    (RequestError); the files themselves are checked by the engine before any model loads."""

    inputs: tuple[str, ...]
    models: tuple[str, ...]
    output: OutputSpec = OutputSpec()
    settings: ScorerSettings = ScorerSettings()
    options: RunOptions = RunOptions()
    engine: str = "local"
    ray: RayOptions = RayOptions()

    def __post_init__(self):
        object.__setattr__(self, "inputs", _paths(self.inputs))
        object.__setattr__(self, "models", _paths(self.models))
        if self.engine == "ray" and self.settings.provider in ("cuda", "tensorrt") and not self.ray.gpus_per_actor:
            object.__setattr__(self, "ray", replace(self.ray, gpus_per_actor=1.0))  # a GPU provider needs a GPU
        self._check()

    def _check(self) -> None:
        if self.engine not in ENGINES:
            raise RequestError(f"engine {self.engine!r}: choose {' or '.join(ENGINES)}")
        if not self.inputs or not self.models:
            raise RequestError("a score run needs at least one input and one model folder")
        if self.engine == "local":
            if self.output.fmt not in LOCAL_FORMATS:
                raise RequestError(f"format {self.output.fmt!r}: the local engine writes tsv or jsonl (parquet "
                                   "shards are --engine ray's)")
            return
        options, settings = self.options, self.settings
        if options.input_format not in ("auto", "tsv") or options.columns.given():
            raise RequestError("--engine ray reads TSV shards: --input-format and the column options are for "
                               "--engine local")
        unsupported = [name for name, used in (("--resume", options.resume), ("--strict", options.strict),
                                               ("--roc", self.output.roc),
                                               ("--threads (use --cpus-per-actor)", settings.threads),
                                               ("--tokenizer-workers", settings.tokenizer_workers is not None))
                       if used]
        if unsupported:
            raise RequestError(f"{', '.join(unsupported)}: not available with --engine ray")
        if self.output.path in (None, "-"):
            raise RequestError("--engine ray needs --output FOLDER (it writes prediction and rejects shards there)")
        if self.output.fmt not in RAY_FORMATS:
            raise RequestError(f"--engine ray writes {' or '.join(RAY_FORMATS)} shards, not {self.output.fmt}")


def rejects_beside(output: str) -> str:
    """The default rejects file: OUTPUT.rejects.tsv, or rejects.tsv when the predictions go to stdout."""
    return "rejects.tsv" if output == "-" else f"{output}.rejects.tsv"


def _paths(values) -> tuple[str, ...]:
    if isinstance(values, (str, os.PathLike)):
        values = [values]
    return tuple(os.fspath(v) for v in values)
