"""GPU training check (issue 13), run by benchmarks/gpu/train.sh on the GPU machine in one call.

(a) The offline MiniLM with the default recipe (preset `minilm`) through the same `train_bert` as `make train`:
    test.tsv accuracy against the CPU run's, seconds per epoch. Its model folder stays on the machine
    (--keep) so that a later call can export it and check fp16 parity there.
(b) The bert-base-uncased shape from `BertConfig()` (random weights; no hub here, and the step time does not
    depend on the weights) with the seed's recipe on the 14,256 training rows, at batch 32 and at batch 128:
    seconds per epoch.

    python -m benchmarks.gpu.train --data data --base-model DIR --out OUT [--epochs-bert 2] [--cpu-smoke]

Results: OUT/gpu_train.json (keys minilm_test_accuracy, minilm_epoch_s, bert_base_epoch_s_bs32,
bert_base_epoch_s_bs128, device) and OUT/gpu_train.md. --cpu-smoke is the dry run for a machine without a GPU
(a few steps of tiny models).
"""
from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import click

CPU_MINILM_TEST_ACCURACY = 0.8215   # train_bert.json of `make demo` on the 2-core CPU (README, Results)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fp32_checkpoint(src: Path, dst: Path) -> Path:
    """A checkpoint folder whose safetensors are fp32 (the carried copy may be fp16, to fit one device call)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy(f, dst / f.name)
    tensors = {k: v.to(torch.float32) if v.is_floating_point() else v
               for k, v in load_file(str(src / "model.safetensors")).items()}
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def bert_base(small: bool):
    from transformers import AutoModelForSequenceClassification, BertConfig

    config = BertConfig(num_labels=2)
    if small:
        config = BertConfig(num_labels=2, num_hidden_layers=2, hidden_size=128, num_attention_heads=2,
                            intermediate_size=512)
    return AutoModelForSequenceClassification.from_config(config)


def per_epoch(report: dict) -> float:
    """Seconds per epoch: the mean over epochs after the first (which pays for start-up) when there are several."""
    s = report["epoch_seconds"]
    return sum(s[1:]) / len(s[1:]) if len(s) > 1 else s[0]


@click.command()
@click.option("--data", "data_dir", type=click.Path(exists=True, path_type=Path), default=Path("data"))
@click.option("--base-model", type=click.Path(exists=True, path_type=Path), required=True,
              help="The MiniLM checkpoint folder (model.safetensors fp32 or fp16, config, tokenizer).")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--keep", type=click.Path(path_type=Path), default=Path("/tmp/tsinfer-gpu/minilm_gpu"),
              help="Where the GPU-trained MiniLM is saved.")
@click.option("--epochs-bert", default=2, show_default=True, help="Epochs per bert-base run (timing only).")
@click.option("--cpu-smoke", is_flag=True, help="Dry run without a GPU: tiny models, a few steps.")
def main(data_dir, base_model, out, keep, epochs_bert, cpu_smoke):
    import torch
    from transformers import AutoTokenizer

    from tsinfer.train.bert import train_bert

    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    result = {"date": datetime.date.today().isoformat(), "device": device, "torch": torch.__version__,
              "cpu_minilm_test_accuracy": CPU_MINILM_TEST_ACCURACY}
    import transformers
    result["transformers"] = transformers.__version__
    log(f"device {device}; torch {torch.__version__}; transformers {transformers.__version__}")

    def save():
        (out / "gpu_train.json").write_text(json.dumps(result, indent=2, default=float) + "\n")

    smoke = {"limit": 256, "max_steps": 6} if cpu_smoke else {}
    ckpt = fp32_checkpoint(base_model, keep.parent / "minilm_base_fp32")
    r = train_bert(data_dir, keep, out / "train_minilm_gpu.json", base_model=str(ckpt), preset="minilm",
                  **smoke)
    result.update(minilm_test_accuracy=r["test_accuracy"], minilm_test_mcc=r["test_mcc"],
                  minilm_val_accuracy=r["val_accuracy"], minilm_epoch_s=per_epoch(r),
                  minilm_epoch_seconds=r["epoch_seconds"], minilm_train_s=r["train_seconds"],
                  minilm_train_tweets_per_s=r["train_tweets_per_s"], precision=r["precision"],
                  minilm_within_half_point=abs(r["test_accuracy"] - CPU_MINILM_TEST_ACCURACY) <= 0.005)
    log(f"MiniLM: {json.dumps({k: v for k, v in result.items() if k.startswith('minilm')}, default=float)}")
    save()

    tokenizer = AutoTokenizer.from_pretrained(ckpt)   # bert-base-uncased's vocabulary, as MiniLM's
    for batch in (32, 128):
        torch.manual_seed(0)
        r = train_bert(data_dir, keep.parent / f"bert_base_bs{batch}", out / f"train_bert_base_bs{batch}.json",
                       base_model="bert-base-uncased shape (BertConfig, random weights)", preset="seed",
                       overrides={"epochs": epochs_bert, "batch_size": batch},
                       model=bert_base(cpu_smoke), tokenizer=tokenizer, **smoke)
        result[f"bert_base_epoch_s_bs{batch}"] = per_epoch(r)
        result[f"bert_base_epoch_seconds_bs{batch}"] = r["epoch_seconds"]
        result[f"bert_base_train_tweets_per_s_bs{batch}"] = r["train_tweets_per_s"]
        log(f"bert-base batch {batch}: epochs {r['epoch_seconds']} s, {r['train_tweets_per_s']:,.0f} tweets/s")
        save()
    result["target_bs32_le_30s"] = result["bert_base_epoch_s_bs32"] <= 30
    save()
    (out / "gpu_train.md").write_text(markdown(result))
    print(markdown(result), flush=True)


def markdown(r: dict) -> str:
    return "\n".join([
        "# GPU training check", "",
        f"Measured {r['date']} on {r['device']}, torch {r['torch']}, transformers {r['transformers']}, "
        f"{r['precision']} autocast; command: `bash benchmarks/gpu/train.sh` (through the device tool).", "",
        "| run | seconds per epoch | training tweets/s | result |", "|---|---:|---:|---|",
        f"| MiniLM-L6, preset minilm (2 epochs, batch 32) | {r['minilm_epoch_s']:.1f} | "
        f"{r['minilm_train_tweets_per_s']:,.0f} | test.tsv accuracy {r['minilm_test_accuracy']:.4f} (CPU run "
        f"{r['cpu_minilm_test_accuracy']}; within 0.5 points: {r['minilm_within_half_point']}) |",
        f"| bert-base shape, seed recipe, batch 32 | {r['bert_base_epoch_s_bs32']:.1f} | "
        f"{r['bert_base_train_tweets_per_s_bs32']:,.0f} | target <= 30 s per epoch: "
        f"{'met' if r['target_bs32_le_30s'] else 'MISSED'} |",
        f"| bert-base shape, seed recipe, batch 128 | {r['bert_base_epoch_s_bs128']:.1f} | "
        f"{r['bert_base_train_tweets_per_s_bs128']:,.0f} | |", "",
        "Seconds per epoch: training only (evaluation excluded), the mean over the epochs after the first when "
        "more than one ran. Every epoch's figure is in gpu_train.json.", ""])


if __name__ == "__main__":
    main()
