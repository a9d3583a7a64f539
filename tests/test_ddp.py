"""The BERT trainer under torchrun: two CPU processes (DDP over gloo) on a small slice."""
import json
import subprocess
import sys
from pathlib import Path

from conftest import tiny_bert


def test_two_process_cpu_ddp_run(small_data, tmp_path):
    model, tokenizer = tiny_bert()
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run([str(torchrun), "--nproc_per_node=2", "-m", "tsinfer.cli", "train", "bert",
                        "--data", str(small_data), "--base-model", str(tmp_path / "tiny"),
                        "--out", str(tmp_path / "out"), "--report", str(tmp_path / "r.json"), "--max-steps", "3", "--batch-size", "8"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["world_size"] == 2 and report["effective_batch_size"] == 16
    assert report["hyperparameters"]["learning_rate"] == 2e-5  # a local folder gets the seed preset
    assert (tmp_path / "out" / "model.safetensors").exists()
