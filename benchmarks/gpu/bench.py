"""GPU check (issues 5 and 12), run by benchmarks/gpu/run.sh on the GPU machine (one call, < 7 minutes).

A bert-base-uncased-shaped classifier (BertConfig(), random weights: throughput does not depend on them) is built
there, exported with torch.onnx (the GPU image has no optimum), fused and converted to fp16 in each layout of
export.bert.GPU_LAYOUTS by the same optimize_variants that `make export` uses. Then, on test.tsv repeated to >= 200k
rows: each layout model-only (its own process, with the attention kernel onnxruntime picked) and PyTorch fp16 on
the same padded batches; each layout end to end through tsinfer's real streaming path (TSV file in, predictions
file out, CUDA provider, IO binding) and a few batch settings; PyTorch eager fp16 end to end; the seed's method
(fp32, pad 284, batch 32, on fewer rows: its per-row cost is constant); and, when train.sh left its GPU-trained
MiniLM on the machine, the fp16 parity of each layout on test.tsv. Results: OUT/gpu.md and OUT/gpu.json. The
models and their export: benchmarks/gpu/models.py.

    python -m benchmarks.gpu.bench --data data/test.tsv --tokenizer DIR --out OUT [--small --cpu]

--small --cpu is the dry run used on a machine without a GPU (a 2-layer model, the CPU provider, fp32).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import time
from pathlib import Path

import click
import numpy as np

from benchmarks.gpu.models import build_layouts, build_model, export_raw, log, minilm_parity, torch_model

PEAK_FP16_TFLOPS = 989.0   # H100/H200 SXM dense fp16/bf16 tensor-core peak (spec sheet); measured matmul ~790


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


def save_batches(encs: list, path: Path, batch_tokens: int, max_batch: int) -> dict:
    """tsinfer's CUDA batch plan over the chunks, padded, saved for the model-only runs (every variant, same bytes)."""
    from tsinfer.infer.batching import pad_batch, plan_batches

    arrays, rows, real, padded = {}, 0, 0, 0
    for enc in encs:
        for rows_idx in plan_batches(enc.lengths, batch_tokens, max_batch):
            ids, mask = pad_batch(enc, rows_idx)
            k = len(arrays) // 2
            arrays[f"ids{k}"], arrays[f"mask{k}"] = ids, mask
            rows, real, padded = rows + len(rows_idx), real + int(mask.sum()), padded + ids.size
    np.savez(path, n=len(arrays) // 2, **arrays)
    return {"batches": len(arrays) // 2, "rows": rows, "padding_efficiency": real / padded}


def model_only(model: Path, batches: Path, options: dict) -> dict:
    """One variant's model-only rate in its own process (see model_only.py), with the attention kernels it used."""
    import subprocess
    import sys

    env = dict(os.environ, ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO="1")
    p = subprocess.run([sys.executable, "-m", "benchmarks.gpu.model_only", "--model", str(model), "--batches",
                        str(batches), "--options", json.dumps(options)], env=env, capture_output=True, text=True,
                       timeout=150)
    lines = (p.stdout + p.stderr).splitlines()
    kernels = sorted({part.split("=", 1)[1].split("\x1b")[0] for line in lines for part in line.split()
                      if part.startswith("SdpaKernel=")})  # the C++ log colours its lines
    found = [json.loads(line[len("RESULT "):]) for line in lines if line.startswith("RESULT ")]
    if not found:
        return {"error": "\n".join(lines[-5:])[-800:], "kernels": kernels}
    return dict(found[0], kernels=kernels)


def torch_batches(model, batches: Path, device: str, passes: int = 2) -> float:
    """PyTorch on the same saved batches: best pass after a warm-up pass, seconds."""
    import torch

    from benchmarks.gpu.model_only import load_batches

    data = load_batches(str(batches))

    def one_pass():
        t = time.perf_counter()
        with torch.inference_mode():
            for ids, mask in data:
                ids, mask = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
                model(input_ids=ids, attention_mask=mask).logits.float().cpu()
        return time.perf_counter() - t

    one_pass()
    return min(one_pass() for _ in range(passes))


@click.command()
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=Path("data/test.tsv"))
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(exists=True, path_type=Path),
              default=Path(".gpucheck/minilm_fp16"), help="A folder with tokenizer.json (bert-base-uncased vocab).")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--work", type=click.Path(path_type=Path), default=Path("/tmp/tsinfer-gpu"))
@click.option("--rows", default=200_000, show_default=True)
@click.option("--seed-rows", default=4096, show_default=True)
@click.option("--layouts", default="padded,packed,packed_mha", show_default=True,
              help="fp16 layouts (export.bert.GPU_LAYOUTS) measured model-only, then end to end.")
@click.option("--configs", default="262144:8192:16384:2:0,262144:8192:16384:3:8,262144:8192:8192:2:8",
              show_default=True, help="batch_tokens:max_batch:chunk_rows:lanes:tokenizer_workers settings tried end "
                                      "to end with the best packed layout (besides the defaults).")
@click.option("--minilm", type=click.Path(path_type=Path), default=Path("/tmp/tsinfer-gpu/minilm_gpu"),
              help="A fine-tuned MiniLM (default: the one train.sh left in an earlier call; or a carried copy made "
                   "by carry_minilm): fp16 parity of each layout, if present.")
@click.option("--small", is_flag=True, help="A 2-layer model (dry run).")
@click.option("--cpu", is_flag=True, help="CPU provider and fp32 (dry run without a GPU: end to end only).")
def main(data, tokenizer_dir, out, work, rows, seed_rows, layouts, configs, minilm, small, cpu):
    import torch

    import onnxruntime as ort

    from tsinfer.infer.batching import usable_cores
    from tsinfer.infer.reader import read_all

    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    device = "cpu" if cpu else "cuda"
    provider, precision = ("cpu", "fp32") if cpu else ("cuda", "fp16")
    layouts = ["padded"] if cpu else layouts.split(",")
    res = Results(out, {"date": datetime.date.today().isoformat(), "onnxruntime": ort.__version__,
                        "providers": ort.get_available_providers(), "torch": torch.__version__,
                        "cpu_cores": usable_cores(),
                        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                        "python": platform.python_version(), "contenders": [], "export": {}, "model_only": {}})
    result = res.result
    log(f"onnxruntime {ort.__version__} providers {result['providers']}; torch {torch.__version__}; "
        f"gpu {result['gpu']}; {usable_cores()} cores")

    t = time.perf_counter()
    config, model = build_model(small)
    raw = work / "raw.onnx"
    result["export"]["exporter"] = export_raw(model, raw)
    result["export"]["export_s"] = round(time.perf_counter() - t, 1)
    folders = build_layouts(raw, work, config, layouts, precision, tokenizer_dir / "tokenizer.json", result)
    res.save()

    big = work / "big.tsv"
    repeat_tsv(data, big, rows)
    texts = read_all(big).texts
    tmodel = torch_model(config).to(device=device, dtype=torch.float32 if cpu else torch.float16).eval()
    lengths = measure_model_only(res, folders, tmodel, texts, tokenizer_dir, work, provider, device)
    best = tsinfer_sweep(res, folders, data, big, work, provider, precision, configs, rows)
    pytorch_end_to_end(res, tmodel, texts, tokenizer_dir, best["setting"], device, cpu)
    seed = res.add("seed method (PyTorch eager fp32, pad 284, batch 32)",
                   *seed_method(config, tokenizer_dir, texts, seed_rows, device))
    for e in result["contenders"]:
        e["x_seed"] = e["tweets_per_s"] / seed["tweets_per_s"]
    fpt = flops_per_tweet(lengths, config)
    ceiling = PEAK_FP16_TFLOPS * 1e12 / fpt
    result["flops"] = {"gflop_per_tweet": fpt / 1e9, "peak_tflops": PEAK_FP16_TFLOPS,
                       "ceiling_tweets_per_s": ceiling, "best_pct_of_ceiling": 100 * best["tweets_per_s"] / ceiling}
    torch_e2e = next(e for e in result["contenders"] if e["name"].startswith("PyTorch"))
    result["target"] = {"tweets_per_s": 60000, "met": best["tweets_per_s"] >= 60000,
                        "x_pytorch": best["tweets_per_s"] / torch_e2e["tweets_per_s"]}
    res.save()
    if not cpu and minilm.exists():
        try:
            result["minilm_fp16_parity"] = minilm_parity(minilm, work, data, list(folders))
        except Exception as e:  # reported, not fatal: the speed figures above stand on their own
            result["minilm_fp16_parity_error"] = str(e)[:500]
            log(f"MiniLM parity failed: {e}")
    res.save()
    (out / "gpu.md").write_text(markdown(result))
    print(markdown(result), flush=True)


class Results:
    """gpu.json, saved after each step so that a run cut short still leaves its figures."""

    def __init__(self, out: Path, result: dict):
        self.out, self.result = out, result

    def save(self) -> None:
        (self.out / "gpu.json").write_text(json.dumps(self.result, indent=2, default=float) + "\n")

    def add(self, name: str, n: int, seconds: float, **extra) -> dict:
        entry = dict(name=name, rows=n, seconds=round(seconds, 3), tweets_per_s=n / seconds, **extra)
        self.result["contenders"].append(entry)
        log(f"{name}: {n:,} rows in {seconds:.2f} s = {n / seconds:,.0f} tweets/s {extra or ''}")
        self.save()
        return entry


def measure_model_only(res: Results, folders: dict, tmodel, texts: list[str], tokenizer_dir: Path, work: Path,
                       provider: str, device: str) -> np.ndarray:
    """Tokenization alone, then every layout and PyTorch on the same saved batches (tsinfer's default plan);
    returns the rows' token lengths."""
    from tsinfer.export.bert import GPU_LAYOUTS
    from tsinfer.infer.batching import (CHUNK_ROWS_BY_PROVIDER, DEFAULT_BATCH_TOKENS, DEFAULT_MAX_BATCH, encode,
                                        load_tokenizer)

    tok = load_tokenizer(tokenizer_dir, 128)
    chunk = CHUNK_ROWS_BY_PROVIDER[provider]
    t = time.perf_counter()
    encs = [encode(tok, texts[i:i + chunk]) for i in range(0, len(texts), chunk)]
    tok_s = time.perf_counter() - t
    lengths = np.concatenate([e.lengths for e in encs])
    res.result["tokenization"] = {"tweets_per_s": len(texts) / tok_s, "mean_tokens": float(lengths.mean())}
    log(f"{len(texts):,} rows; tokenization alone {len(texts) / tok_s:,.0f} tweets/s (mean {lengths.mean():.1f} "
        "tokens)")
    batches = work / "batches.npz"
    res.result["model_only_batches"] = save_batches(encs, batches, DEFAULT_BATCH_TOKENS[provider],
                                                    DEFAULT_MAX_BATCH[provider])
    if provider != "cpu":
        for layout, folder in folders.items():
            r = model_only(folder / "model_fp16.onnx", batches, GPU_LAYOUTS[layout]["cuda_options"])
            res.result["model_only"][layout] = r
            log(f"model only, {layout}: {r}")
            res.save()
    secs = torch_batches(tmodel, batches, device)
    res.result["model_only"]["pytorch_fp16_sdpa"] = {"tweets_per_s": len(texts) / secs, "seconds": secs}
    log(f"model only, PyTorch: {len(texts) / secs:,.0f} tweets/s")
    res.save()
    return lengths


def tsinfer_sweep(res: Results, folders: dict, data: Path, big: Path, work: Path, provider: str, precision: str,
                  configs: str, rows: int) -> dict:
    """tsinfer's streaming path end to end (file in, file out): every layout at the defaults, then the settings
    of --configs with the best packed layout; model load is reported apart. Returns the best entry."""
    from tsinfer.infer.batching import (CHUNK_ROWS_BY_PROVIDER, DEFAULT_BATCH_TOKENS, DEFAULT_LANES, DEFAULT_MAX_BATCH,
                                        default_tokenizer_workers)
    from tsinfer.infer.models import ScorerSettings
    from tsinfer.infer.request import OutputSpec, RunOptions, ScoreRequest
    from tsinfer.infer.score import score_files

    warm = work / "warm.tsv"
    repeat_tsv(data, warm, min(20_000, rows))

    def run(layout, budget, max_batch, chunk_rows, lanes, workers):
        settings = ScorerSettings(provider=provider, precision=precision, batch_tokens=budget, max_batch=max_batch,
                                  lanes=lanes, tokenizer_workers=workers)
        score_files(ScoreRequest([str(warm)], [str(folders[layout])], OutputSpec(str(work / "warm_pred.tsv")),
                                 settings))
        r = score_files(ScoreRequest([str(big)], [str(folders[layout])], OutputSpec(str(work / "pred.tsv")), settings,
                                     RunOptions(chunk_rows=chunk_rows)))
        s = next(iter(r.summaries.values()))
        return res.add(f"tsinfer score, {precision} {layout}, {provider} (file in, file out), budget {budget}, "
                       f"max batch {max_batch}, chunk {chunk_rows}, {lanes} lane(s), {workers} tokenizer "
                       "process(es)", r.rows_scored,
                       r.wall_s - r.load_s, load_s=round(r.load_s, 2), inference_s=r.timings["inference_s"],
                       read_prepare_s=r.timings["read_prepare_s"], prepare_wait_s=r.timings["prepare_wait_s"],
                       first_chunk_ready_s=r.timings.get("first_chunk_ready_s"),
                       write_s=r.timings["write_s"],
                       padding_efficiency=round(s["padding_efficiency"], 3), accuracy=round(s["accuracy"], 4),
                       setting=(budget, max_batch, chunk_rows, lanes, workers), layout=layout)

    default_setting = (DEFAULT_BATCH_TOKENS[provider], DEFAULT_MAX_BATCH[provider], CHUNK_ROWS_BY_PROVIDER[provider],
                       DEFAULT_LANES.get(provider, 1), default_tokenizer_workers(provider))
    tried = [run(layout, *default_setting) for layout in folders]
    packed = [e for e in tried if e["layout"] != "padded"]
    best_layout = max(packed or tried, key=lambda e: e["tweets_per_s"])["layout"]
    for c in configs.split(","):
        setting = tuple(map(int, c.split(":")))
        if setting != default_setting:
            tried.append(run(best_layout, *setting))
    res.result["tsinfer_best"] = max(tried, key=lambda e: e["tweets_per_s"])
    return res.result["tsinfer_best"]


def pytorch_end_to_end(res: Results, tmodel, texts: list[str], tokenizer_dir: Path, setting: tuple, device: str,
                       cpu: bool) -> None:
    """PyTorch eager (sdpa), tokenization included, all rows length-sorted at once with tsinfer's best plan."""
    from tsinfer.infer.batching import Encoded, encode, load_tokenizer

    tok = load_tokenizer(tokenizer_dir, 128)
    t = time.perf_counter()
    encs = [encode(tok, texts[i:i + 4096]) for i in range(0, len(texts), 4096)]
    whole = Encoded(np.concatenate([e.ids for e in encs]),
                    np.concatenate([[0], np.cumsum(np.concatenate([e.lengths for e in encs]))]), 0)
    tok_s = time.perf_counter() - t
    b, m = setting[:2]
    torch_dynamic(tmodel, whole, device, b, m)  # warm-up: kernel selection per shape
    secs = torch_dynamic(tmodel, whole, device, b, m)
    res.add(f"PyTorch eager {'fp32' if cpu else 'fp16'}, sdpa, all rows length-sorted, budget {b}, max batch {m} "
            "(tokenization included, no file I/O)", len(texts), secs + tok_s, model_only_s=round(secs, 3))


def seed_method(config, tokenizer_dir: Path, texts: list[str], seed_rows: int, device: str) -> tuple[int, float]:
    """The seed's method: fp32, every row padded to 284, batches of 32, file order; returns (rows, seconds)."""
    import torch
    from tokenizers import Tokenizer

    seed_model = torch_model(config).to(device=device, dtype=torch.float32).eval()
    seed_tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    seed_tok.enable_truncation(max_length=284)
    seed_tok.enable_padding(length=284)

    def run(rows):
        with torch.inference_mode():
            for i in range(0, len(rows), 32):
                batch = seed_tok.encode_batch(rows[i:i + 32])
                ids = torch.tensor([e.ids for e in batch], device=device)
                mask = torch.tensor([e.attention_mask for e in batch], device=device)
                seed_model(input_ids=ids, attention_mask=mask).logits.argmax(-1).cpu()

    run(texts[:256])
    t = time.perf_counter()
    run(texts[:seed_rows])
    return seed_rows, time.perf_counter() - t


def markdown(r: dict) -> str:
    torch_entry = next(e for e in r["contenders"] if e["name"].startswith("PyTorch"))
    lines = [
        "# GPU benchmark", "",
        f"Measured {r['date']} on {r['gpu']} ({r['cpu_cores']} CPU cores), onnxruntime {r['onnxruntime']}, torch "
        f"{r['torch']}, Python {r['python']}; command: `bash benchmarks/gpu/run.sh` (through the device tool). "
        "Model: bert-base-uncased shape from `BertConfig()`, random weights; rows: test.tsv repeated.", "",
        f"Export: {r['export']['exporter']} in {r['export']['export_s']} s; fp16 layouts: "
        + "; ".join(f"{k}: {v.get('fused_ops', v.get('error'))}" for k, v in r["export"].items()
                    if isinstance(v, dict)) + ".", "",
        f"Model only (same {r['model_only_batches']['batches']} padded batches for every contender, tsinfer's CUDA "
        f"plan, padding efficiency {r['model_only_batches']['padding_efficiency']:.3f}; best of 2 passes after a "
        "warm-up):", "", "| model | tweets/s | attention kernel |", "|---|---:|---|"]
    for name, m in r["model_only"].items():
        rate = f"{m['tweets_per_s']:,.0f}" if "tweets_per_s" in m else "failed: " + m.get("error", "")[:120]
        lines.append(f"| {name} | {rate} | {', '.join(m.get('kernels', [])) or '-'} |")
    lines += ["", "End to end:", "",
              "| contender | rows | seconds | tweets/s | x seed | x PyTorch fp16 | notes |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for e in r["contenders"]:
        notes = ", ".join(f"{k}={e[k]}" for k in ("load_s", "inference_s", "model_only_s", "read_prepare_s",
                                                  "prepare_wait_s", "first_chunk_ready_s", "write_s",
                                                  "padding_efficiency", "accuracy") if k in e)
        lines.append(f"| {e['name']} | {e['rows']:,} | {e['seconds']:.2f} | {e['tweets_per_s']:,.0f} | "
                     f"{e['x_seed']:.1f} | {e['tweets_per_s'] / torch_entry['tweets_per_s']:.2f} | {notes} |")
    f = r["flops"]
    lines += ["", f"- tokenization alone (HF fast tokenizer, all cores): "
              f"{r['tokenization']['tweets_per_s']:,.0f} tweets/s; mean {r['tokenization']['mean_tokens']:.1f} tokens",
              f"- FLOP ceiling: {f['gflop_per_tweet']:.2f} GFLOP per tweet at {f['peak_tflops']:.0f} TFLOP/s = "
              f"{f['ceiling_tweets_per_s']:,.0f} tweets/s; tsinfer's best is {f['best_pct_of_ceiling']:.1f}% of it",
              f"- target >= 60,000 tweets/s end to end and >= 1.3x PyTorch: {r['tsinfer_best']['tweets_per_s']:,.0f} "
              f"({r['target']['x_pytorch']:.2f}x) -> {'met' if r['target']['met'] else 'MISSED'}"]
    for layout, q in r.get("minilm_fp16_parity", {}).items():
        lines.append(f"- fp16 parity, {layout}: the fine-tuned MiniLM of --minilm, test.tsv ({q['rows']:,} rows), "
                     f"CUDA fp16 vs fp32 (CPU provider): agreement {q['agreement']:.5f}, max |dp| "
                     f"{q['max_abs_delta_p']:.2e}, accuracy {q['accuracy_fp16']:.4f} vs {q['accuracy_fp32']:.4f}")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
