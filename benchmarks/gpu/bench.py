"""GPU check of issue 5, run by benchmarks/gpu/run.sh on the GPU machine (one call, < 6 minutes).

A bert-base-uncased-shaped classifier (BertConfig(), random weights: throughput does not depend on them) is built
there, exported with torch.onnx (the GPU image has no optimum), fused and converted to fp16 by the same
export.bert.optimize_variants that `make export` uses, and scored by tsinfer's real streaming path (TSV file in,
predictions file out, CUDA provider, IO binding) on test.tsv repeated to >= 200k rows. In the same call and on the
same rows: PyTorch eager fp16 with dynamic padding, the seed's method (fp32, pad 284, batch 32, on fewer rows:
its per-row cost is constant) and the tokenizer alone. Results: OUT/gpu.md and OUT/gpu.json.

    python -m benchmarks.gpu.bench --data data/test.tsv --tokenizer artifacts/onnx/bert --out OUT [--small --cpu]

--small --cpu is the dry run used on a machine without a GPU (a 2-layer model, the CPU provider, fp32).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import time
from pathlib import Path

import click
import numpy as np

PEAK_FP16_TFLOPS = 989.0   # H100/H200 SXM dense fp16/bf16 tensor-core peak (spec sheet); measured matmul ~790


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def repeat_tsv(src: Path, dst: Path, rows: int) -> int:
    """test.tsv's data rows repeated until there are at least `rows` (header kept once)."""
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    header, body = lines[0], lines[1:]
    copies = -(-rows // len(body))
    with open(dst, "w", encoding="utf-8") as fh:
        fh.write(header)
        for _ in range(copies):
            fh.writelines(body)
    return copies * len(body)


def build_model(small: bool):
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig

    torch.manual_seed(0)
    config = BertConfig(num_labels=2)  # bert-base-uncased: 12 layers, 768 wide, 12 heads, vocab 30522
    if small:
        config = BertConfig(num_labels=2, num_hidden_layers=2, hidden_size=128, num_attention_heads=2,
                            intermediate_size=512)
    # eager attention exports the pattern onnxruntime's optimizer fuses into its Attention kernel
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager").eval()
    return config, model


# fusion variants tried for the fp16 file (onnxruntime.transformers FusionOptions attributes)
FUSION_VARIANTS = {"default": {}, "fastgelu": {"enable_gelu_approximation": True},
                   "mha": {"use_multi_head_attention": True}}


def export_raw(model, raw: Path) -> str:
    """torch.onnx export of the classifier with dynamic batch and sequence axes; returns which exporter ran."""
    import torch

    from tsinfer.export.bert import OPSET

    ids = torch.ones((2, 16), dtype=torch.int64)
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    try:
        torch.onnx.export(model, args, str(raw), input_names=names, output_names=["logits"], dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)
        return "torch.onnx (TorchScript exporter)"
    except Exception as e:  # a torch without the TorchScript exporter: the dynamo one
        log(f"TorchScript export failed ({str(e).splitlines()[0][:200]}); trying dynamo=True")
        torch.onnx.export(model, args, str(raw), input_names=names, output_names=["logits"], dynamic_axes=axes,
                          opset_version=OPSET, dynamo=True, external_data=False)
        return "torch.onnx (dynamo exporter)"


def model_folder(folder: Path, onnx_files: dict, tokenizer: Path) -> dict:
    """A tsinfer model folder (meta.json with sha256) around already written ONNX files."""
    import onnx

    from tsinfer.export.run import write_meta

    shutil.copy(tokenizer, folder / "tokenizer.json")
    write_meta(folder, {"kind": "bert", "labels": ["negative", "positive"], "max_length": 128,
                        "files": onnx_files, "providers": {p: ["cpu", "cuda"] for p in onnx_files},
                        "default_precision": {"cpu": next(iter(onnx_files)), "cuda": next(iter(onnx_files))}})
    ops: dict = {}
    for node in onnx.load(str(folder / next(iter(onnx_files.values()))), load_external_data=False).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    keep = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "EmbedLayerNormalization", "BiasGelu",
            "FastGelu", "LayerNormalization")
    return {k: v for k, v in ops.items() if k in keep}


def flops_per_tweet(lengths: np.ndarray, config) -> float:
    """Forward FLOPs (2 per multiply-add) of the encoder on unpadded rows: weights plus attention scores."""
    h, ffn, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token = 2 * (4 * h * h + 2 * h * ffn)
    t = lengths.astype(np.float64)
    return float(np.mean(layers * (per_token * t + 4 * h * t * t)))


def torch_dynamic(model, enc, device: str, batch_tokens: int, max_batch: int) -> float:
    """PyTorch eager, length-sorted token-budget batches (the same plan as tsinfer); returns seconds."""
    import torch

    from tsinfer.infer.batching import pad_batch, plan_batches

    t = time.perf_counter()
    out = []
    with torch.inference_mode():
        for rows in plan_batches(enc.lengths, batch_tokens, max_batch):
            ids, mask = pad_batch(enc, rows)
            ids, mask = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
            out.append(model(input_ids=ids, attention_mask=mask).logits.float().argmax(-1))
        torch.cat(out).cpu()
    return time.perf_counter() - t


@click.command()
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=Path("data/test.tsv"))
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(exists=True, path_type=Path),
              default=Path("artifacts/onnx/bert"), help="A folder with tokenizer.json (bert-base-uncased vocab).")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--work", type=click.Path(path_type=Path), default=Path("/tmp/tsinfer-gpu"))
@click.option("--rows", default=200_000, show_default=True)
@click.option("--seed-rows", default=4096, show_default=True)
@click.option("--configs", default="131072:2048:16384,131072:2048:65536,262144:8192:65536", show_default=True,
              help="batch_tokens:max_batch:chunk_rows settings tried with the default fusion.")
@click.option("--variants", default="default,fastgelu,mha", show_default=True,
              help=f"fp16 fusion variants, each scored at the best setting ({', '.join(FUSION_VARIANTS)}).")
@click.option("--minilm-fp16", type=click.Path(path_type=Path), default=Path("artifacts/onnx/bert/model_fp16.onnx"),
              help="The fine-tuned MiniLM's fp16 file: scored on test.tsv for fp16 parity, when present.")
@click.option("--reference", type=click.Path(path_type=Path), default=Path(".gpucheck/fp32_cpu.tsv"),
              help="tsinfer's fp32 CPU predictions of test.tsv with that model (the parity reference).")
@click.option("--small", is_flag=True, help="A 2-layer model (dry run).")
@click.option("--cpu", is_flag=True, help="CPU provider and fp32 (dry run without a GPU).")
def main(data, tokenizer_dir, out, work, rows, seed_rows, configs, variants, minilm_fp16, reference, small, cpu):
    import torch

    import onnxruntime as ort
    from tokenizers import Tokenizer

    from tsinfer.export.bert import optimize_variants
    from tsinfer.infer.batching import Encoded, encode, load_tokenizer
    from tsinfer.infer.reader import read_all
    from tsinfer.infer.score import score_files

    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    device = "cpu" if cpu else "cuda"
    provider, precision = ("cpu", "fp32") if cpu else ("cuda", "fp16")
    result = {"date": datetime.date.today().isoformat(), "onnxruntime": ort.__version__,
              "providers": ort.get_available_providers(), "torch": torch.__version__, "cpu_cores": os.cpu_count(),
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "python": platform.python_version(), "contenders": [], "export": {}}
    log(f"onnxruntime {ort.__version__} providers {result['providers']}; torch {torch.__version__}; "
        f"gpu {result['gpu']}; {os.cpu_count()} cores")

    def save():  # after each step, so a run cut short still leaves its figures
        (out / "gpu.json").write_text(json.dumps(result, indent=2, default=float) + "\n")

    def add(name, n, seconds, **extra):
        entry = dict(name=name, rows=n, seconds=round(seconds, 3), tweets_per_s=n / seconds, **extra)
        result["contenders"].append(entry)
        log(f"{name}: {n:,} rows in {seconds:.2f} s = {n / seconds:,.0f} tweets/s {extra or ''}")
        save()
        return entry

    # fine-tuned MiniLM fp16 on test.tsv through the CUDA provider vs tsinfer's fp32 CPU predictions (parity)
    if not cpu and minilm_fp16.exists() and reference.exists():
        folder = work / "minilm_fp16"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(minilm_fp16, folder / "model_fp16.onnx")
        model_folder(folder, {"fp16": "model_fp16.onnx"}, tokenizer_dir / "tokenizer.json")
        score_files([str(data)], [str(folder)], provider, "fp16", output=str(work / "minilm_fp16.tsv"))
        result["minilm_fp16_parity"] = fp16_parity(work / "minilm_fp16.tsv", reference)
        log(f"MiniLM fp16 (CUDA) vs fp32 (CPU) on test.tsv: {result['minilm_fp16_parity']}")
        save()

    t = time.perf_counter()
    config, model = build_model(small)
    raw = work / "raw.onnx"
    result["export"]["exporter"] = export_raw(model, raw)
    result["export"]["export_s"] = round(time.perf_counter() - t, 1)
    folders = {}
    for variant in variants.split(","):
        t = time.perf_counter()
        folder = work / f"bert_base_{variant}"
        folder.mkdir(parents=True, exist_ok=True)
        files = optimize_variants(raw, folder, config.num_attention_heads, config.hidden_size,
                                  variants=(precision,), gpu_fusion=FUSION_VARIANTS[variant])
        fused = model_folder(folder, files, tokenizer_dir / "tokenizer.json")
        result["export"][variant] = {"fused_ops": fused, "seconds": round(time.perf_counter() - t, 1),
                                     "bytes": (folder / files[precision]).stat().st_size}
        folders[variant] = folder
        log(f"fusion variant {variant}: {result['export'][variant]}")
    save()

    big = work / "big.tsv"
    repeat_tsv(data, big, rows)
    texts = read_all(big).texts
    log(f"{len(texts):,} rows in {big}")

    # tokenization alone: the HF fast tokenizer on all cores, as the scorer calls it (4,096-row chunks)
    tok = load_tokenizer(folders["default"], 128)
    t = time.perf_counter()
    encs = [encode(tok, texts[i:i + 4096]) for i in range(0, len(texts), 4096)]
    tok_s = time.perf_counter() - t
    lengths = np.concatenate([e.lengths for e in encs])
    result["tokenization"] = {"tweets_per_s": len(texts) / tok_s, "mean_tokens": float(lengths.mean())}
    log(f"tokenization alone: {len(texts) / tok_s:,.0f} tweets/s (mean {lengths.mean():.1f} tokens)")

    # tsinfer: the real streaming path; model load (sha256, session, warm-up) is reported apart
    warm = work / "warm.tsv"
    repeat_tsv(data, warm, min(20_000, rows))
    score_files([str(warm)], [str(folders["default"])], provider, precision, output=str(work / "warm_pred.tsv"))

    def tsinfer_run(variant, budget, max_batch, chunk_rows):
        r = score_files([str(big)], [str(folders[variant])], provider, precision, batch_tokens=budget,
                        max_batch=max_batch, output=str(work / "pred.tsv"), chunk_rows=chunk_rows)
        s = next(iter(r.summaries.values()))
        return add(f"tsinfer score, {precision} {variant} fusion, {provider} (file in, file out), budget {budget}, "
                   f"max batch {max_batch}, chunk {chunk_rows}", r.rows_scored, r.wall_s - r.load_s,
                   load_s=round(r.load_s, 2), inference_s=r.timings["inference_s"],
                   read_prepare_s=r.timings["read_prepare_s"], write_s=r.timings["write_s"],
                   padding_efficiency=round(s["padding_efficiency"], 3), accuracy=round(s["accuracy"], 4),
                   setting=(budget, max_batch, chunk_rows), variant=variant)

    tried = [tsinfer_run("default", *map(int, c.split(":"))) for c in configs.split(",")]
    best_setting = max(tried, key=lambda e: e["tweets_per_s"])["setting"]
    for variant in folders:
        if variant != "default":
            tried.append(tsinfer_run(variant, *best_setting))
    best = max(tried, key=lambda e: e["tweets_per_s"])
    result["tsinfer_best"] = best

    # PyTorch eager fp16, dynamic padding (tsinfer's best batch plan), tokenization included, on as many rows as
    # fit in ~20 s after a 10k-row warm-up (kernel selection)
    dtype = torch.float32 if cpu else torch.float16
    tmodel = torch_model(config).to(device=device, dtype=dtype).eval()
    budget, max_batch, _ = best["setting"]
    warm_enc = encode(tok, texts[:10_000])
    rate = len(warm_enc) / torch_dynamic(tmodel, warm_enc, device, budget, max_batch)
    n = min(len(texts), max(10_000, int(rate * 20)))
    t = time.perf_counter()
    encs = [encode(tok, texts[i:i + 4096]) for i in range(0, n, 4096)]
    whole = Encoded(np.concatenate([e.ids for e in encs]),
                    np.concatenate([[0], np.cumsum(np.concatenate([e.lengths for e in encs]))]), 0)
    tok_s2 = time.perf_counter() - t
    secs = torch_dynamic(tmodel, whole, device, budget, max_batch)
    add(f"PyTorch eager {'fp16' if not cpu else 'fp32'}, sdpa, all rows length-sorted, budget {budget}, max batch "
        f"{max_batch} (tokenization included, no file I/O)", n, secs + tok_s2, model_only_s=round(secs, 3))

    # the seed's method: fp32, every row padded to 284, batches of 32, file order
    seed_model = torch_model(config).to(device=device, dtype=torch.float32).eval()
    seed_tok = Tokenizer.from_file(str(folders["default"] / "tokenizer.json"))
    seed_tok.enable_truncation(max_length=284)
    seed_tok.enable_padding(length=284)
    seed_texts = texts[:seed_rows]

    def seed_run(rows):
        with torch.inference_mode():
            for i in range(0, len(rows), 32):
                batch = seed_tok.encode_batch(rows[i:i + 32])
                ids = torch.tensor([e.ids for e in batch], device=device)
                mask = torch.tensor([e.attention_mask for e in batch], device=device)
                seed_model(input_ids=ids, attention_mask=mask).logits.argmax(-1).cpu()

    seed_run(seed_texts[:256])
    t = time.perf_counter()
    seed_run(seed_texts)
    seed = add("seed method (PyTorch eager fp32, pad 284, batch 32)", len(seed_texts), time.perf_counter() - t)

    for e in result["contenders"]:
        e["x_seed"] = e["tweets_per_s"] / seed["tweets_per_s"]
    fpt = flops_per_tweet(lengths, config)
    ceiling = PEAK_FP16_TFLOPS * 1e12 / fpt
    result["flops"] = {"gflop_per_tweet": fpt / 1e9, "peak_tflops": PEAK_FP16_TFLOPS,
                       "ceiling_tweets_per_s": ceiling, "best_pct_of_ceiling": 100 * best["tweets_per_s"] / ceiling}
    result["target"] = {"tweets_per_s": 60000, "met": best["tweets_per_s"] >= 60000}
    save()
    (out / "gpu.md").write_text(markdown(result))
    print(markdown(result), flush=True)


def fp16_parity(pred_path: Path, reference: Path) -> dict:
    """Agreement, score deltas and accuracy of two tsinfer prediction files (id, label, pred, score) row by row."""
    def load(path):
        rows = [line.rstrip("\n").split("\t") for line in open(path, encoding="utf-8")][1:]
        return (np.array([int(r[1]) for r in rows]), np.array([int(r[2]) for r in rows]),
                np.array([float(r[3]) for r in rows]))

    (y, p16, s16), (y32, p32, s32) = load(pred_path), load(reference)
    assert len(y) == len(y32) and (y == y32).all(), "the two files hold other rows"
    return {"rows": int(len(y)), "agreement": float((p16 == p32).mean()),
            "max_abs_delta_p": float(np.abs(s16 - s32).max()), "accuracy_fp16": float((p16 == y).mean()),
            "accuracy_fp32": float((p32 == y).mean())}


def torch_model(config):
    """PyTorch contenders: the same architecture with the default (sdpa) attention and the same seed's weights."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config)


def markdown(r: dict) -> str:
    torch_entry = next(e for e in r["contenders"] if e["name"].startswith("PyTorch"))
    lines = [
        "# GPU benchmark", "",
        f"Measured {r['date']} on {r['gpu']} ({r['cpu_cores']} CPU cores), onnxruntime {r['onnxruntime']}, torch "
        f"{r['torch']}, Python {r['python']}; command: `bash benchmarks/gpu/run.sh` (through the device tool). "
        "Model: bert-base-uncased shape from `BertConfig()`, random weights; rows: test.tsv repeated.", "",
        f"Export: {r['export']['exporter']} in {r['export']['export_s']} s; fp16 fusion variants: "
        + "; ".join(f"{k}: {v['fused_ops']}, {v['bytes'] / 1e6:.0f} MB" for k, v in r["export"].items()
                    if isinstance(v, dict)) + ".", "",
        "| contender | rows | seconds | tweets/s | x seed | x PyTorch fp16 | notes |", "|---|---:|---:|---:|---:|---:|---|"]
    for e in r["contenders"]:
        notes = ", ".join(f"{k}={e[k]}" for k in ("load_s", "inference_s", "model_only_s", "read_prepare_s", "write_s",
                                                  "padding_efficiency", "accuracy") if k in e)
        lines.append(f"| {e['name']} | {e['rows']:,} | {e['seconds']:.2f} | {e['tweets_per_s']:,.0f} | "
                     f"{e['x_seed']:.1f} | {e['tweets_per_s'] / torch_entry['tweets_per_s']:.2f} | {notes} |")
    f = r["flops"]
    lines += ["", f"- tokenization alone (HF fast tokenizer, all cores, 4,096-row chunks): "
              f"{r['tokenization']['tweets_per_s']:,.0f} tweets/s; mean {r['tokenization']['mean_tokens']:.1f} tokens",
              f"- FLOP ceiling: {f['gflop_per_tweet']:.2f} GFLOP per tweet at {f['peak_tflops']:.0f} TFLOP/s = "
              f"{f['ceiling_tweets_per_s']:,.0f} tweets/s; tsinfer's best is {f['best_pct_of_ceiling']:.1f}% of it",
              f"- target >= 60,000 tweets/s end to end: {r['tsinfer_best']['tweets_per_s']:,.0f} -> "
              f"{'met' if r['target']['met'] else 'MISSED'}"]
    if "minilm_fp16_parity" in r:
        q = r["minilm_fp16_parity"]
        lines.append(f"- fp16 parity, the fine-tuned MiniLM on test.tsv ({q['rows']:,} rows), CUDA fp16 vs CPU fp32: "
                     f"agreement {q['agreement']:.5f}, max |dp| {q['max_abs_delta_p']:.2e}, accuracy "
                     f"{q['accuracy_fp16']:.4f} vs {q['accuracy_fp32']:.4f}")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
