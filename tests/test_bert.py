import json
from dataclasses import astuple

import onnx
import pytest

from tsinfer.train.bert import PRESETS, train_bert, training_arguments
from tsinfer.train.precision import training_precision

REPORT_KEYS = {"val_accuracy", "val_mcc", "val_roc_auc", "test_accuracy", "test_mcc", "test_roc_auc",
               "train_seconds", "n_train", "n_val", "base_model", "hyperparameters", "history"}


def test_tiny_bert_training_writes_model_tokenizer_report_and_curve(bert_artifacts):
    bert = bert_artifacts / "bert"
    assert (bert / "model.safetensors").exists() and (bert / "tokenizer.json").exists()
    assert not list(bert.glob("*.bin")) and not list(bert.glob("*.pt"))  # nothing pickled
    report = json.loads((bert_artifacts / "reports" / "train_bert.json").read_text())
    assert REPORT_KEYS <= report.keys()
    assert report["n_test"] == 300 and report["hyperparameters"]["max_steps"] == 4
    assert report["target"] == {"test_accuracy": 0.83, "met": report["test_accuracy"] >= 0.83}
    assert len(report["history"]) >= 1 and "val_mcc" in report["history"][0]
    assert (bert_artifacts / "reports" / "train_bert_curve.png").stat().st_size > 1000


def test_a_few_steps_on_the_real_minilm_save_a_labelled_model_and_time_each_epoch(small_data, tmp_path):
    r = train_bert(small_data, tmp_path / "bert", tmp_path / "r.json",
                   overrides={"learning_rate": 1e-4, "batch_size": 16}, limit=32, max_steps=3)
    assert r["base_model"] == "all-minilm-l6-v2" and r["preset"] == "minilm"
    assert r["n_train"] == 32
    # 32 rows at batch 16: 2 steps an epoch, so 3 steps end the first epoch and stop inside the second
    assert len(r["epoch_seconds"]) == 2 and all(t > 0 for t in r["epoch_seconds"])
    assert r["device"] == "cpu" and r["train_tweets_per_s"] > 0
    # auto: bf16 autocast where this CPU has bf16 units, fp32 otherwise
    assert (r["precision"], r["precision_source"]) == astuple(training_precision(cuda=False))[:2]
    config = json.loads((tmp_path / "bert" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert 0.0 <= r["val_accuracy"] <= 1.0 and r["test_roc_auc"] is not None


def test_seed_preset_is_the_notebook_recipe():
    assert PRESETS["seed"].to_dict() == {"learning_rate": 2e-5, "epochs": 4, "batch_size": 32, "warmup_ratio": 0.0,
                                         "weight_decay": 0.0, "adam_epsilon": 1e-8, "max_grad_norm": 1.0,
                                         "max_length": 128, "text_normalization": "tweet-v1",
                                         "label_smoothing": 0.0, "layer_decay": 1.0, "average_last": 0,
                                         # used only with teacher targets (train/distill.py)
                                         "distill_temperature": 2.0, "distill_alpha": 0.9}


def test_training_arguments_keep_the_recipe_and_length_grouping(tmp_path):
    args = training_arguments(str(tmp_path), PRESETS["minilm"], cuda=False, precision="fp32", world=1, max_steps=-1)
    assert args.learning_rate == 8e-5 and args.num_train_epochs == 2 and args.warmup_ratio == 0.06
    assert args.group_by_length and args.use_cpu and not args.bf16 and not args.fp16
    assert args.save_strategy == "no"  # no Trainer checkpoints: they would pickle the optimizer state


def test_bert_export_variants_meta_and_parity(bert_artifacts):
    folder = bert_artifacts / "onnx" / "bert"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["kind"] == "bert" and meta["max_length"] == 128
    assert meta["files"] == {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8.onnx"}
    assert meta["providers"]["int8"] == ["cpu"] and "cpu" not in meta["providers"]["fp16"]
    assert {"tokenizer.json", "model.onnx", "model_int8.onnx", "model_fp16.onnx"} <= set(meta["sha256"])
    fused = onnx.load(folder / "model.onnx")
    ops = {n.op_type for n in fused.graph.node}
    # the CPU fusion: attention fused, residual adds beside standard LayerNormalization (export/bert.py)
    assert {"MultiHeadAttention", "LayerNormalization", "BiasGelu"} <= ops, ops
    assert "SkipLayerNormalization" not in ops
    # the last layer runs for the [CLS] token only (export/bert.py); the fp32 parity below shows it is exact
    assert any(n.name.endswith("_first_token_Slice") for n in fused.graph.node)
    int8_ops = {n.op_type for n in onnx.load(folder / "model_int8.onnx").graph.node}
    # per-token activation scales (export/int8.py): no per-batch quantizer is left
    assert {"MatMulIntegerToFloat", "QuantizeLinear", "MultiHeadAttention"} <= int8_ops, int8_ops
    assert not {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"} & int8_ops, int8_ops
    fp16 = onnx.load(folder / "model_fp16.onnx")
    # the packed CUDA layout: no padded token reaches a MatMul or the attention
    fp16_ops = {n.op_type for n in fp16.graph.node}
    assert {"RemovePadding", "PackedAttention", "RestorePadding"} <= fp16_ops, fp16_ops
    assert [i.name for i in fp16.graph.input] == [i.name for i in fused.graph.input]
    assert meta["gpu_layout"] == "packed" and meta["cuda_options"] == {}
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert fp16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # keep_io_types
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)
    parity = json.loads((bert_artifacts / "reports" / "parity.json").read_text())
    variants = {v["variant"]: v for v in parity["models"]["bert"]["variants"]}
    assert variants["fp32"]["rows"] == 300
    assert variants["fp32"]["agreement"] >= 0.9995 and variants["fp32"]["max_abs_delta"] <= 1e-4
    assert variants["int8"]["measured"] and variants["int8"]["rows"] == 300
    assert variants["fp16"]["measured"] is False and "GPU" in variants["fp16"]["reason"]


def test_last_epoch_weight_average_is_evaluated_and_kept_only_when_validation_prefers_it(tiny_bf16_run):
    r, folder, _ = tiny_bf16_run
    average = r["checkpoint_average"]
    assert average["snapshots"] == 4 and isinstance(average["kept"], bool)
    best_epoch_mcc = max(h["val_mcc"] for h in r["history"])
    assert len(r["history"]) == 1  # the average's evaluation is not one more epoch
    assert average["kept"] == (average["val_mcc"] > best_epoch_mcc)
    assert (r["best_epoch"] == "average of the last epoch") == average["kept"]
    assert r["val_mcc"] == pytest.approx(max(best_epoch_mcc, average["val_mcc"]))
    assert r["calibration"]["ece_bins"] == 15 and r["val_ece"] is not None
    assert (folder / "train_bert_reliability.png").stat().st_size > 1000
