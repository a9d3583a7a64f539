"""The Trainer callbacks of the BERT fine-tuning: the best epoch by validation MCC kept in memory, the last
epoch's weight average, and each epoch's wall time."""
from __future__ import annotations

import time

import torch
from transformers import TrainerCallback


class KeepBestByMcc(TrainerCallback):
    """Holds a CPU copy of the weights of the epoch with the best validation MCC."""

    def __init__(self):
        self.best_mcc, self.best_epoch, self.best_state = -2.0, None, None

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        if metrics and metrics.get("eval_mcc", -2.0) > self.best_mcc:
            self.best_mcc, self.best_epoch = metrics["eval_mcc"], state.epoch
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class AverageLastEpoch(TrainerCallback):
    """Sums CPU copies of the weights at `snapshots` evenly spaced steps of the last epoch (its last step among
    them); average() is their mean. The Trainer evaluates it afterwards and KeepBestByMcc keeps it only if its
    validation MCC beats every epoch's, so averaging can never make the kept model worse on validation.
    """

    def __init__(self, snapshots: int):
        self.snapshots, self.steps, self.sum, self.taken = int(snapshots), set(), None, 0

    def on_train_begin(self, args, state, control, **kwargs):
        per_epoch = state.max_steps / max(args.num_train_epochs, 1)
        self.steps = {round(state.max_steps - i * per_epoch / self.snapshots) for i in range(self.snapshots)}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.snapshots and state.global_step in self.steps:
            weights = {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in model.state_dict().items()}
            self.sum = weights if self.sum is None else {k: self.sum[k] + weights[k] for k in weights}
            self.taken += 1

    def average(self, like: dict) -> dict | None:
        """The mean weights in the dtypes of `like` (a state dict), or None when fewer than two were taken."""
        if self.taken < 2:
            return None
        return {k: (v / self.taken).to(like[k].dtype) for k, v in self.sum.items()}


class EpochTimer(TrainerCallback):
    """Wall seconds of each training epoch, evaluation excluded (the Trainer evaluates after on_epoch_end).

    CUDA is synchronised at the epoch edges only, so the timing adds no per-step host synchronisation.
    """

    def __init__(self, cuda: bool):
        self.cuda, self.seconds, self._start = cuda, [], None

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._start = self._now()

    def on_epoch_end(self, args, state, control, **kwargs):
        if self._start is not None:
            self.seconds.append(self._now() - self._start)
