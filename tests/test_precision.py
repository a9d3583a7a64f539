"""The training precision: chosen from the CPU's flags (or the GPU), overridden by --precision, recorded; a tiny
BERT trains in bf16 autocast on the CPU, evaluates in fp32 and saves fp32 weights."""
import json
import os
import types

import pytest
import torch
from safetensors import safe_open

from tsinfer.train import precision as precision_module
from tsinfer.train.bert import PRESETS, training_arguments
from tsinfer.train.errors import TrainError
from tsinfer.train.precision import Precision, cpu_bf16, read_cpu_flags, training_precision

ZEN4 = {"fpu", "sse2", "avx2", "avx512f", "avx512bw", "avx512_bf16", "avx512_vnni"}
SAPPHIRE_RAPIDS = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}
SKYLAKE_X = {"sse2", "avx2", "avx512f", "avx512bw", "avx512dq", "avx512vl"}  # AVX-512 without bf16 units


@pytest.mark.parametrize("flags, expected", [
    (ZEN4, Precision("bf16", "auto (cpu has avx512_bf16)")),
    (SAPPHIRE_RAPIDS, Precision("bf16", "auto (cpu has amx_bf16+avx512_bf16)")),
    ({"avx2", "amx_bf16"}, Precision("bf16", "auto (cpu has amx_bf16)")),
    (SKYLAKE_X, Precision("fp32", "auto (cpu has no bf16 units)")),
    (set(), Precision("fp32", "auto (cpu has no bf16 units)")),
])
def test_auto_on_the_cpu_is_bf16_only_with_bf16_units(flags, expected):
    assert training_precision("auto", cuda=False, cpu_flags=flags) == expected


def test_precision_override_wins_over_the_flags():
    assert training_precision("fp32", cuda=False, cpu_flags=ZEN4) == Precision("fp32", "--precision")
    assert training_precision("bf16", cuda=False, cpu_flags=ZEN4) == Precision("bf16", "--precision")
    emulated = training_precision("bf16", cuda=False, cpu_flags=SKYLAKE_X)
    assert (emulated.name, emulated.source) == ("bf16", "--precision")  # allowed, with a warning line
    assert "no bf16 units" in emulated.warning and "slower than fp32" in emulated.warning
    with pytest.raises(TrainError, match="fp16 needs a GPU"):
        training_precision("fp16", cuda=False, cpu_flags=ZEN4)
    with pytest.raises(TrainError, match="unknown precision 'int8'"):
        training_precision("int8", cuda=False, cpu_flags=ZEN4)


def test_cuda_keeps_bf16_where_the_gpu_has_it_and_fp16_otherwise():
    assert training_precision("auto", cuda=True, cuda_bf16=True) == Precision("bf16", "auto (gpu has bf16)")
    assert training_precision("auto", cuda=True, cuda_bf16=False) == Precision("fp16", "auto (gpu has no bf16)")
    assert training_precision("fp32", cuda=True, cuda_bf16=True) == Precision("fp32", "--precision")
    assert training_precision("fp16", cuda=True, cuda_bf16=True) == Precision("fp16", "--precision")
    with pytest.raises(TrainError, match="this GPU has no bf16"):
        training_precision("bf16", cuda=True, cuda_bf16=False)


def test_flags_are_read_from_cpuinfo_and_torch_answers_without_them(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu avx2 "
                       "avx512_bf16\n")
    assert read_cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert read_cpu_flags(tmp_path / "absent") is None
    assert read_cpu_flags(tmp_path) is None  # a folder, not a file: no flags either
    fake = types.SimpleNamespace(ops=types.SimpleNamespace(mkldnn=types.SimpleNamespace(
        _is_mkldnn_bf16_supported=lambda: True)))
    monkeypatch.setattr(precision_module, "torch", fake)
    assert cpu_bf16(None) == "torch reports cpu bf16"
    assert cpu_bf16(set()) is None  # a flag list without bf16 units is not second-guessed
    monkeypatch.setattr(precision_module, "torch", types.SimpleNamespace(ops=types.SimpleNamespace(
        mkldnn=types.SimpleNamespace())))
    assert cpu_bf16(None) is None  # a torch without the check: fp32


def test_cpu_bf16_leaves_the_trainers_own_mixed_precision_off(tmp_path):
    for precision in ("bf16", "fp32"):
        args = training_arguments(str(tmp_path), PRESETS["minilm"], cuda=False, precision=precision, world=1,
                                  max_steps=-1)
        assert args.use_cpu and not args.bf16 and not args.fp16
        assert os.environ["ACCELERATE_MIXED_PRECISION"] == "no"


def test_a_tiny_bert_trains_in_bf16_on_the_cpu_evaluates_in_fp32_and_saves_fp32(tiny_bf16_run):
    r, folder, seen = tiny_bf16_run  # seen: (training?, dtype of the classifier's output, autocast on?)
    assert (r["device"], r["precision"], r["precision_source"]) == ("cpu", "bf16", "--precision")
    assert seen == {(True, torch.bfloat16, True), (False, torch.float32, False)}
    with safe_open(folder / "bert" / "model.safetensors", "pt") as f:
        dtypes = {f.get_slice(name).get_dtype() for name in f.keys()}
    assert dtypes == {"F32"}
    record = json.loads((folder / "bert" / "training_data.json").read_text())
    assert record["training_run"] == {"device": "cpu", "precision": "bf16", "precision_source": "--precision",
                                      "dropout_masks": "numpy (train/dropout.py)"}
    assert r["history"] and 0.0 <= r["val_accuracy"] <= 1.0 and r["train_tweets_per_s"] > 0
