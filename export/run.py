"""`make export`: trained models -> self-contained ONNX folders, and the parity report.

    python -m tsinfer.export.run --artifacts artifacts [--data data] [--skip-parity]

Reads ARTIFACTS/svc and ARTIFACTS/bert (from `make train`), writes ARTIFACTS/onnx/svc, ARTIFACTS/onnx/bert and
ARTIFACTS/reports/parity.json.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from tsinfer.infer.models import available_providers, sha256_file
from tsinfer.infer.reader import read_all
from tsinfer.train.report import write_report

PARITY_TARGETS = {
    "svc": {"agreement": 1.0, "max_abs_delta": 1e-4},
    "fp32": {"agreement": 0.9995, "max_abs_delta": 1e-4},
    "fp16": {"agreement": 0.999},
    "int8": {"accuracy_drop_points": 0.5},
}


def write_meta(folder: Path, meta: dict) -> dict:
    """meta.json with the sha256 of every other file in the folder, so that the runtime can verify them."""
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != "meta.json")
    meta = dict(meta, sha256={name: sha256_file(folder / name) for name in files})
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def _report_figures(path: Path) -> dict:
    if not path.exists():
        return {}
    r = json.loads(path.read_text())
    keys = ("val_accuracy", "val_mcc", "val_roc_auc", "test_accuracy", "test_mcc", "test_roc_auc", "base_model")
    return {k: r.get(k) for k in keys}


def export_svc(svc_dir: Path, out: Path, reports: Path) -> tuple:
    import onnx

    from tsinfer.export.svc import build_svc_onnx, dense_svc_bytes
    from tsinfer.train.svc import SvcModel

    model = SvcModel.load(svc_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(build_svc_onnx(model), out / "model.onnx")
    size = (out / "model.onnx").stat().st_size
    meta = write_meta(out, {
        "kind": "svc", "labels": ["negative", "positive"],
        "input": "text preprocessed by tsinfer.infer.preprocess (spaCy lemmas joined by spaces)",
        "outputs": {"label": "0/1", "decision": "SVC decision value (float64)",
                    "probability": "P(positive): Platt sigmoid of the decision, fitted on the validation split"},
        "score": "probability",
        "files": {"fp64": "model.onnx"}, "providers": {"fp64": ["cpu"]}, "default_precision": {"cpu": "fp64"},
        "n_support_vectors": int(model.support_vectors.shape[0]),
        "vocabulary_size": int(model.support_vectors.shape[1]),
        "hyperparameters": model.params, "platt": list(model.platt),
        "model_bytes": size, "dense_svc_bytes_avoided": dense_svc_bytes(model),
        "training_report": _report_figures(reports / "train_svc.json"),
    })
    return model, meta


def export_bert(bert_dir: Path, out: Path, reports: Path) -> dict:
    from transformers import AutoConfig

    from tsinfer.export.bert import DEFAULT_PRECISION, GPU_LAYOUT, GPU_LAYOUTS, PROVIDERS, export_bert_onnx

    files = export_bert_onnx(bert_dir, out)
    train_report = reports / "train_bert.json"
    max_length = json.loads(train_report.read_text())["hyperparameters"]["max_length"] if train_report.exists() \
        else 128
    config = AutoConfig.from_pretrained(bert_dir)
    return write_meta(out, {
        "kind": "bert", "labels": ["negative", "positive"], "max_length": max_length,
        "score": "P(positive), softmax of the logits",
        "files": files, "providers": {p: PROVIDERS[p] for p in files},
        "default_precision": DEFAULT_PRECISION,
        "gpu_layout": GPU_LAYOUT, "cuda_options": GPU_LAYOUTS[GPU_LAYOUT]["cuda_options"],
        "notes": {"int8": "dynamic int8 quantization has no CUDA kernels: CPU provider only",
                  "fp16": f"fp32 inputs/outputs (keep_io_types); {GPU_LAYOUT} layout (export/bert.py GPU_LAYOUTS); "
                          "for the CUDA provider (its packed contrib ops have no CPU kernels)"},
        "architecture": {"layers": config.num_hidden_layers, "hidden": config.hidden_size,
                         "heads": config.num_attention_heads},
        "training_report": _report_figures(reports / "train_bert.json"),
    })


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
        ok &= (fp32_accuracy - entry["onnx_accuracy"]) * 100 <= target["accuracy_drop_points"]
    return dict(entry, target=target, meets_target=bool(ok))


def run_export(artifacts: Path, data_dir: Path, parity: bool = True, which=("svc", "bert"),
               limit: int | None = None) -> dict:
    reports = artifacts / "reports"
    inputs = {"svc": artifacts / "svc" / "config.json", "bert": artifacts / "bert" / "config.json"}
    for kind in which:
        if not inputs[kind].exists():
            raise click.ClickException(f"{inputs[kind]} is missing: run `make train` first")
    holdout = None
    if parity:
        test_path = data_dir / "test.tsv"
        if not test_path.exists():
            raise click.ClickException(f"{test_path} is missing: run `make data` first (or --skip-parity)")
        holdout = read_all(test_path)
        texts, labels = holdout.texts[:limit], holdout.labels[:limit]
    report = {"data": str(data_dir / "test.tsv"), "models": {}}
    if "svc" in which:
        click.echo("export: SVC -> ONNX", err=True)
        model, meta = export_svc(artifacts / "svc", artifacts / "onnx" / "svc", reports)
        report["models"]["svc"] = {"model_bytes": meta["model_bytes"],
                                   "dense_svc_bytes_avoided": meta["dense_svc_bytes_avoided"]}
        if parity:
            from tsinfer.export.parity import svc_parity

            entry = svc_parity(model, artifacts / "onnx" / "svc", texts, labels)
            report["models"]["svc"]["variants"] = [check_targets(entry, "svc", None)]
    if "bert" in which:
        click.echo("export: BERT -> ONNX (optimum-onnx, fusions, fp16, int8)", err=True)
        meta = export_bert(artifacts / "bert", artifacts / "onnx" / "bert", reports)
        report["models"]["bert"] = {"files": meta["files"]}
        if parity:
            from tsinfer.export.parity import bert_parity

            here = available_providers()
            provider_for = {p: next((q for q in meta["providers"][p] if q in here and q != "tensorrt"), None)
                            for p in meta["files"]}
            entries = bert_parity(artifacts / "bert", artifacts / "onnx" / "bert", texts, labels, provider_for)
            fp32_acc = next((e["onnx_accuracy"] for e in entries if e["variant"] == "fp32"), None)
            report["models"]["bert"]["variants"] = [check_targets(e, "bert", fp32_acc) for e in entries]
    if parity:
        write_report(reports / "parity.json", report)
    return report


@click.command()
@click.option("--artifacts", default="artifacts", show_default=True, type=click.Path(path_type=Path))
@click.option("--data", "data_dir", default="data", show_default=True, type=click.Path(path_type=Path))
@click.option("--only", type=click.Choice(["svc", "bert"]), default=None, help="Export one model only.")
@click.option("--skip-parity", is_flag=True, help="Do not score test.tsv for the parity report.")
@click.option("--limit", type=int, default=None, help="Parity on the first N rows only (smoke runs).")
def main(artifacts, data_dir, only, skip_parity, limit):
    """Export the trained SVC and BERT to ONNX folders and write the parity report."""
    report = run_export(artifacts, data_dir, parity=not skip_parity, which=(only,) if only else ("svc", "bert"),
                        limit=limit)
    for name, m in report["models"].items():
        for v in m.get("variants", []):
            if not v.get("measured", True):
                click.echo(f"parity {name:4s} {v['variant']:5s} not measured: {v['reason']}")
                continue
            click.echo(f"parity {name:4s} {v['variant']:5s} rows {v['rows']:,} agreement {v['agreement']:.5f} "
                       f"max|d{v['compared_value']}| {v['max_abs_delta']:.2e} accuracy ref {v['reference_accuracy']:.4f}"
                       f" onnx {v['onnx_accuracy']:.4f} -> {'meets target' if v['meets_target'] else 'MISSES TARGET'}")
    if "svc" in report["models"]:
        m = report["models"]["svc"]
        click.echo(f"svc model.onnx {m['model_bytes'] / 1e6:.2f} MB (dense support vectors would be "
                   f"{m['dense_svc_bytes_avoided'] / 1e9:.2f} GB)")


if __name__ == "__main__":
    main()
