"""`tsinfer export`: trained models -> self-contained ONNX folders, and the parity report.

    tsinfer export --artifacts artifacts [--data data | --parity-file FILE | --skip-parity]

Reads ARTIFACTS/svc and ARTIFACTS/bert (from `tsinfer train`), writes ARTIFACTS/onnx/svc, ARTIFACTS/onnx/bert and
ARTIFACTS/reports/parity.json. Parity scores a labelled file (the seed's test.tsv by default) with both the trained
model and its ONNX graphs. Each meta.json carries the label mapping and the data record of the training run.
"""
from __future__ import annotations

import json
from pathlib import Path

from tsinfer.infer.formats import Columns
from tsinfer.infer.meta import DEFAULT_MAX_LENGTH, ModelMeta, sha256_file
from tsinfer.infer.models import available_providers
from tsinfer.infer.labels import BINARY, LabelSet
from tsinfer.train.errors import DataError, ExportError, ParityError
from tsinfer.train.report import TRAINING_DATA_FILE, Progress, log_progress, write_report

PARITY_TARGETS = {
    "svc": {"agreement": 1.0, "max_abs_delta": 1e-4},
    "fp32": {"agreement": 0.9995, "max_abs_delta": 1e-4},
    "fp16": {"agreement": 0.999},
    "int8": {"accuracy_drop_points": 0.5},
    # the CPU engine's default model: the CPU issue's bound on the accuracy cost of its speed
    "int8 openvino": {"accuracy_drop_points": 0.3},
}


def _report_figures(path: Path) -> dict:
    if not path.exists():
        return {}
    r = json.loads(path.read_text())
    keys = ("val_accuracy", "val_mcc", "val_roc_auc", "test_accuracy", "test_mcc", "test_roc_auc", "base_model")
    return {k: r.get(k) for k in keys}


# What the runtime reads from a trained folder's record, copied to the top of meta.json when present: the text
# normalisation the model was trained with, and the temperature its logits are divided by before the softmax.
RUNTIME_KEYS = ("text_normalization", "temperature")


def _training_record(model_dir: Path) -> dict:
    """meta.json's labels, label mapping, runtime settings and training data record, from the trained folder."""
    path = model_dir / TRAINING_DATA_FILE
    record = json.loads(path.read_text()) if path.exists() else {}
    mapping = record.pop("label_mapping", None)
    runtime = {key: record.pop(key) for key in RUNTIME_KEYS if record.get(key) is not None}
    return {"labels": record.pop("labels", list(BINARY.names)), "label_mapping": mapping, **runtime,
            "training_data": record or None}


def trained_classes(model_dir: Path) -> LabelSet:
    """The classes a trained folder was fitted on (its training record; binary for a folder without one)."""
    record = _training_record(model_dir)
    return LabelSet.from_mapping(record["labels"], record["label_mapping"])


def export_svc(svc_dir: Path, out: Path, reports: Path) -> tuple:
    import onnx

    from tsinfer.export.svc import build_svc_onnx, dense_svc_bytes
    from tsinfer.train.svc import SvcModel

    model = SvcModel.load(svc_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(build_svc_onnx(model), out / "model.onnx")
    size = (out / "model.onnx").stat().st_size
    meta = ModelMeta.from_dict({
        "kind": "svc", **_training_record(svc_dir),
        "input": "text preprocessed by tsinfer.infer.preprocess (spaCy lemmas joined by spaces)",
        **(_svc_outputs_multiclass(model) if model.multiclass else {
            "outputs": {"label": "0/1", "decision": "SVC decision value (float64)",
                        "probability": "P(positive): Platt sigmoid of the decision, fitted on the validation split"},
            "score": "probability"}),
        "files": {"fp64": "model.onnx"}, "providers": {"fp64": ["cpu"]}, "default_precision": {"cpu": "fp64"},
        "n_support_vectors": int(model.support_vectors.shape[0]),
        "vocabulary_size": int(model.support_vectors.shape[1]),
        "hyperparameters": model.params, **({} if model.multiclass else {"platt": list(model.platt)}),
        "model_bytes": size, "dense_svc_bytes_avoided": dense_svc_bytes(model),
        "training_report": _report_figures(reports / "train_svc.json"),
    }).write(out)
    return model, meta


def _svc_outputs_multiclass(model) -> dict:
    """meta.json's description of a multi-class SVC graph's outputs (export/svc.py)."""
    from tsinfer.train.svc import ovo_pairs

    pairs = ", ".join(f"{model.labels[i]}/{model.labels[j]}" for i, j in ovo_pairs(len(model.labels)))
    return {"outputs": {"label": "class index into labels: the one-vs-one vote (sklearn's SVC.predict)",
                        "decision": f"one-vs-one decision values (float64), one per pair: {pairs}",
                        "probability": "(rows, classes) probabilities: multinomial logistic regression on the "
                                       "decision values, fitted on the validation split"},
            "score": "probability"}


def export_bert(bert_dir: Path, out: Path, reports: Path, *, progress: Progress = log_progress) -> ModelMeta:
    from transformers import AutoConfig

    from tsinfer.export.bert import DEFAULT_PRECISION, GPU_LAYOUT, GPU_LAYOUTS, PROVIDERS, export_bert_onnx

    files = export_bert_onnx(bert_dir, out)
    train_report = reports / "train_bert.json"
    max_length = json.loads(train_report.read_text())["hyperparameters"]["max_length"] if train_report.exists() \
        else DEFAULT_MAX_LENGTH
    config = AutoConfig.from_pretrained(bert_dir)
    meta = {
        "kind": "bert", **_training_record(bert_dir), "max_length": max_length,
        "score": ("P(positive), softmax of the logits" if len(config.id2label) == 2 else
                  "one probability per class, softmax of the logits") + " (divided by `temperature` first, when "
                 "meta.json has one)",
        "files": files, "providers": {p: PROVIDERS[p] for p in files},
        "default_precision": {provider: p if p in files else "fp32" for provider, p in DEFAULT_PRECISION.items()},
        "gpu_layout": GPU_LAYOUT, "cuda_options": GPU_LAYOUTS[GPU_LAYOUT]["cuda_options"],
        "notes": {"int8": "dynamic int8 quantization has no CUDA kernels: CPU provider only",
                  "fp16": f"fp32 inputs/outputs (keep_io_types); {GPU_LAYOUT} layout (export/bert.py GPU_LAYOUTS); "
                          "for the CUDA provider (its packed contrib ops have no CPU kernels)" if "fp16" in files
                          else "not written: onnxruntime's optimizer fused none of this graph's attention, which "
                               "packing needs; CUDA runs the fp32 file"},
        "architecture": {"layers": config.num_hidden_layers, "hidden": config.hidden_size,
                         "heads": config.num_attention_heads},
        "training_report": _report_figures(reports / "train_bert.json"),
    }
    meta.update(_openvino_export(bert_dir, out, meta, progress=progress))
    return ModelMeta.from_dict(meta).write(out)


def _openvino_export(bert_dir: Path, out: Path, meta: dict, *, progress: Progress) -> dict:
    """meta.json's OpenVINO entries: the NNCF int8 file calibrated on the training rows, or nothing (with a line
    saying why) where the openvino extra is missing or the training file cannot be read again."""
    from tsinfer.infer.preprocess import normalization_for

    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError:
        progress("export: OpenVINO int8 skipped: the openvino extra is not installed (pip install "
                 "'tsinfer-sentiment[openvino]'); CPU scoring runs onnxruntime's int8")
        return {}
    texts = _calibration_texts(meta.get("training_data") or {}, LabelSet.from_mapping(meta["labels"],
                                                                                       meta["label_mapping"]))
    if not texts:
        progress("export: OpenVINO int8 skipped: the training file named in training_data.json is gone or changed "
                 "(its rows calibrate the int8 scales); CPU scoring runs onnxruntime's int8")
        return {}
    from tsinfer.export.openvino import calibration_ids, export_openvino_int8

    ids = calibration_ids(out, texts, max_length=meta["max_length"], normalize=normalization_for(meta))
    progress(f"export: BERT -> OpenVINO int8 (NNCF, calibrated on {len(ids)} training rows)")
    return {"openvino_files": export_openvino_int8(bert_dir, out, ids),
            "openvino_calibration": {"rows": len(ids), "file": "training data (training_data.json, role train)"}}


def _calibration_texts(record: dict, classes: LabelSet) -> list[str]:
    """The training texts, read again from the file the training record names, if it is still the same file."""
    from tsinfer.train.data import read_labelled

    entry = next((f for f in record.get("files", []) if f.get("role") == "train"), None)
    if entry is None or not Path(entry["path"]).is_file() or sha256_file(Path(entry["path"])) != entry["sha256"]:
        return []
    try:
        rows, _, _ = read_labelled(entry["path"], role="calibration", classes=classes)
    except DataError:
        return []
    return rows.texts


def check_targets(entry: dict, kind: str, fp32_accuracy: float | None) -> dict:
    if not entry.get("measured", True):
        return entry
    target = PARITY_TARGETS["svc" if kind == "svc" else entry["variant"]]
    ok = True
    if "agreement" in target:
        ok &= entry["agreement"] >= target["agreement"]
    if "max_abs_delta" in target:
        ok &= entry["max_abs_delta"] <= target["max_abs_delta"]
    if "accuracy_drop_points" in target and fp32_accuracy is not None:
        # rounded: 2 rows of 400 are 0.5 points, not 0.5000000000000004
        ok &= round((fp32_accuracy - entry["onnx_accuracy"]) * 100, 9) <= target["accuracy_drop_points"]
    return dict(entry, target=target, meets_target=bool(ok))


def parity_rows(data_dir: Path, parity_file: str | Path | None, input_format: str, columns: Columns, limit: int | None,
                classes: LabelSet = BINARY) -> tuple[str, list[str], list[int]]:
    """(source, texts, labels) that parity scores: --parity-file, else the seed's test.tsv in data_dir; its labels
    must be among the model's classes."""
    from tsinfer.train.data import read_labelled  # scikit-learn: imported only when parity runs

    source = Path(parity_file) if parity_file is not None else data_dir / "test.tsv"
    if parity_file is None and not source.exists():
        raise ExportError(f"{source} is missing: give a labelled --parity-file FILE (your test or validation data), "
                          "run `make data` for the seed's, or --skip-parity")
    try:
        rows, _, _ = read_labelled(source, role="parity", input_format=input_format, columns=columns,
                                   classes=classes)
    except DataError as e:
        raise ExportError(f"parity data: {e}") from e
    return str(source), rows.texts[:limit], rows.labels[:limit]


def run_export(artifacts: Path, data_dir: Path, parity: bool = True, which=("svc", "bert"),
               limit: int | None = None, *, parity_file: str | Path | None = None, input_format: str = "auto",
               columns: Columns = Columns(), progress: Progress = log_progress) -> dict:
    """Export the trained models in `artifacts` and, with `parity`, compare each ONNX graph with its model."""
    artifacts, reports = Path(artifacts), Path(artifacts) / "reports"
    inputs = {"svc": artifacts / "svc" / "config.json", "bert": artifacts / "bert" / "config.json"}
    for kind in which:
        if not inputs[kind].exists():
            raise ExportError(f"{inputs[kind]} is missing: train it first (tsinfer train {kind} --out "
                              f"{artifacts / kind})")
    source, rows = None, {}
    for kind in which if parity else ():  # read once per label set: both models usually share theirs
        classes = trained_classes(artifacts / kind)
        if classes.names not in rows:
            source, *rows[classes.names] = parity_rows(Path(data_dir), parity_file, input_format, columns, limit,
                                                       classes)
    report = {"data": source, "models": {}}
    if "svc" in which:
        texts, labels = rows.get(trained_classes(artifacts / "svc").names, (None, None))
        progress("export: SVC -> ONNX")
        model, meta = export_svc(artifacts / "svc", artifacts / "onnx" / "svc", reports)
        report["models"]["svc"] = {"model_bytes": meta.extra["model_bytes"],
                                   "dense_svc_bytes_avoided": meta.extra["dense_svc_bytes_avoided"]}
        if parity:
            from tsinfer.export.parity import svc_parity

            entry = svc_parity(model, artifacts / "onnx" / "svc", texts, labels)
            report["models"]["svc"]["variants"] = [check_targets(entry, "svc", None)]
    if "bert" in which:
        texts, labels = rows.get(trained_classes(artifacts / "bert").names, (None, None))
        progress("export: BERT -> ONNX (optimum-onnx, fusions, fp16, int8)")
        meta = export_bert(artifacts / "bert", artifacts / "onnx" / "bert", reports, progress=progress)
        report["models"]["bert"] = {"files": meta.files}
        if parity:
            report["models"]["bert"]["variants"] = _bert_parity(artifacts, meta, texts, labels)
    if parity:
        write_report(reports / "parity.json", report)
    return report


def _bert_parity(artifacts: Path, meta: ModelMeta, texts: list[str], labels: list[int]) -> list[dict]:
    from tsinfer.export.parity import bert_parity

    here = available_providers()
    provider_for = {p: next((q for q in meta.providers[p] if q in here and q != "tensorrt"), None)
                    for p in meta.files}
    entries = bert_parity(artifacts / "bert", artifacts / "onnx" / "bert", texts, labels, provider_for)
    fp32_acc = next((e["onnx_accuracy"] for e in entries if e["variant"] == "fp32"), None)
    return [check_targets(e, "bert", fp32_acc) for e in entries]


def parity_misses(report: dict) -> list[str]:
    """The measured graphs that miss their target, as "MODEL VARIANT"."""
    return [f"{name} {v['variant']}" for name, m in report["models"].items() for v in m.get("variants", [])
            if v.get("measured", True) and not v["meets_target"]]


def require_parity(report: dict) -> None:
    """ParityError when a measured graph misses its target: the export is written, but not fit to serve as is."""
    misses = parity_misses(report)
    if misses:
        raise ParityError(misses)


def parity_lines(report: dict) -> list[str]:
    """The parity report as the lines the command prints."""
    lines = []
    for name, m in report["models"].items():
        for v in m.get("variants", []):
            if not v.get("measured", True):
                lines.append(f"parity {name:4s} {v['variant']:5s} not measured: {v['reason']}")
                continue
            lines.append(f"parity {name:4s} {v['variant']:13s} rows {v['rows']:,} agreement {v['agreement']:.5f} "
                         f"max|d{v['compared_value']}| {v['max_abs_delta']:.2e} accuracy ref "
                         f"{v['reference_accuracy']:.4f} onnx {v['onnx_accuracy']:.4f} -> "
                         f"{'meets target' if v['meets_target'] else 'MISSES TARGET'}")
    if "svc" in report["models"]:
        m = report["models"]["svc"]
        lines.append(f"svc model.onnx {m['model_bytes'] / 1e6:.2f} MB (dense support vectors would be "
                     f"{m['dense_svc_bytes_avoided'] / 1e9:.2f} GB)")
    return lines
