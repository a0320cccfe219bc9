"""Knowledge distillation: retrain a student to match a teacher, on TVM, before compiling it.

    student, report = relaycomp.distill("teacher.onnx", pruned_student, "train.npz",
                                        DistillConfig(epochs=20), labels=y)
    print(report.summary())

The teacher runs once over the data (compiled by relaycomp) and its logits are cached for the
whole run; the student trains on TVM (:mod:`relaycomp.distill.train`) with the loss
α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1−α)·CE(s, y) (pure soft targets without labels), in
mini-batches with shuffling, a learning-rate schedule, and a validation split with early
stopping that keeps the best weights. Same seed, same data → the same student.

An ONNX student (path, ``example:NAME`` or ModelProto) comes back as an ONNX ModelProto: the same
graph with new initializers. A Relax student (``IRModule`` / ``ImportedModel``) comes back as a
Relax module. ``alpha=0`` with labels is plain supervised training (the from-scratch baseline).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from relaycomp.distill.data import (
    Dataset,
    batches,
    check_dataset,
    sample_shapes,
    split,
    teacher_logits,
)
from relaycomp.distill.loss import kd_loss_coefficients, kd_loss_per_sample
from relaycomp.distill.optim import OPTIMIZERS, SCHEDULES
from relaycomp.distill.student import DistillError, Student, student_from_onnx, student_from_relax
from relaycomp.distill.train import Trainer, training_program

__all__ = ["DistillConfig", "DistillError", "DistillReport", "distill"]


@dataclass(frozen=True)
class DistillConfig:
    """How to distill. Every field has a default that works for small classifiers.

    ``temperature`` T > 0 softens both distributions; ``alpha`` in [0, 1] weighs the soft-target
    term against cross-entropy on labels (ignored without labels: pure soft targets).
    ``batch_size`` applies when the student's batch dim is symbolic (a fixed one is used as is).
    ``optimizer``: ``adam`` or ``sgd`` (with ``momentum``); ``schedule``: ``cosine``, ``step``
    or ``constant``. ``val_split``: fraction held out for validation (0: none, no early stop);
    ``patience``: epochs without improvement before stopping (0: never stop early).
    """

    temperature: float = 4.0
    alpha: float = 0.7
    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 32
    val_split: float = 0.1
    seed: int = 0
    optimizer: str = "adam"
    schedule: str = "cosine"
    weight_decay: float = 0.0
    momentum: float = 0.9
    patience: int = 5

    def __post_init__(self):
        checks = [(self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
                  (0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}"),
                  (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
                  (self.lr > 0, f"lr must be > 0, got {self.lr}"),
                  (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
                  (0.0 <= self.val_split < 1.0,
                   f"val_split must be in [0, 1), got {self.val_split}"),
                  (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
                  (0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}"),
                  (self.patience >= 0, f"patience must be >= 0, got {self.patience}")]
        for ok, message in checks:
            if not ok:
                raise DistillError(message)
        OPTIMIZERS.get(self.optimizer)  # unknown names raise, listing the known ones
        SCHEDULES.get(self.schedule)

    def to_json(self) -> dict:
        """JSON form for reports."""
        return asdict(self)


@dataclass
class DistillReport:
    """What distillation did: data, parameters trained, per-epoch history, before/after metrics.

    ``metric`` is ``accuracy`` (against labels) or ``teacher_agreement`` (argmax equal to the
    teacher's) without labels; ``before``/``after``/``teacher`` are measured on the validation
    split (on the training data when there is none).
    """

    config: dict
    metric: str
    samples: dict
    batch: int
    trained: dict
    teacher: float
    before: dict
    after: dict
    best_epoch: int
    stopped_early: bool
    history: list[dict] = field(default_factory=list)
    samples_per_second: float = 0.0
    seconds: float = 0.0

    def to_json(self) -> dict:
        """JSON form."""
        return asdict(self)

    def summary(self) -> str:
        """Human-readable lines for the CLI."""
        where = "validation" if self.samples["val"] else "training data"
        return "\n".join([
            f"trained {self.trained['tensors']} tensors ({self.trained['params']:,} params) on "
            f"{self.samples['train']} samples, batch {self.batch}; "
            f"{len(self.history)} epoch(s), best {self.best_epoch}"
            + (" (stopped early)" if self.stopped_early else ""),
            (f"{self.metric} on {where}: teacher {self.teacher:.2%}, student "
             f"{self.before['metric']:.2%} -> {self.after['metric']:.2%}"),
            (f"loss {self.before['loss']:.4f} -> {self.after['loss']:.4f}; "
             f"{self.samples_per_second:,.0f} training samples/s, {self.seconds:.1f} s")])


def _is_onnx(model) -> bool:
    return isinstance(model, (str, os.PathLike, onnx.ModelProto))


def _load_student(student, data, batch_size: int) -> tuple[Student, dict]:
    if _is_onnx(student):
        from relaycomp.frontend.examples import resolve_model_path
        from relaycomp.frontend.onnx_import import graph_inputs, load_onnx

        if not isinstance(student, onnx.ModelProto):
            student = load_onnx(resolve_model_path(student))
        arrays, shapes = sample_shapes(data, graph_inputs(student))
        return student_from_onnx(student, shapes, batch_size), arrays
    loaded = student_from_relax(student)
    arrays, _ = sample_shapes(data, loaded.inputs)
    return loaded, arrays


class _Run:
    """One distillation run's data, teacher outputs and metrics."""

    def __init__(self, student: Student, data: Dataset, teacher: np.ndarray,
                 config: DistillConfig):
        self.student, self.data, self.teacher, self.config = student, data, teacher, config
        self.names = [s.name for s in student.inputs]
        self.onehot = np.zeros((len(data), student.classes), np.float32)
        if data.labels is not None:  # rows of unlabelled samples (-1) stay all-zero
            labelled = data.labels >= 0
            self.onehot[np.flatnonzero(labelled), data.labels[labelled]] = 1.0

    def feed(self, rows: np.ndarray) -> list[np.ndarray]:
        return [self.data.inputs[name][rows] for name in self.names]

    def evaluate(self, trainer: Trainer, index: np.ndarray) -> dict:
        """Loss and metric of the current student on ``index``."""
        logits = [trainer.predict(self.feed(rows))[:int((w > 0).sum())]
                  for rows, w in batches(index, self.student.batch)]
        logits = np.concatenate(logits)
        labels = self.data.labels[index] if self.data.labels is not None else None
        loss = kd_loss_per_sample(logits, self.teacher[index], labels,
                                  self.config.temperature, self.config.alpha).mean()
        return {"loss": float(loss), "metric": self.metric_of(logits, index)}

    def metric_of(self, logits: np.ndarray, index: np.ndarray) -> float:
        """Accuracy on the labelled samples of ``index`` (agreement with the teacher without)."""
        predicted = logits.argmax(axis=1)
        labels = self.data.labels[index] if self.data.labels is not None else None
        if labels is None or not (labels >= 0).any():
            return float((predicted == self.teacher[index].argmax(axis=1)).mean())
        known = labels >= 0
        return float((predicted[known] == labels[known]).mean())


def _better(new: dict, best: dict | None) -> bool:
    if best is None:
        return True
    return (new["metric"], -new["loss"]) > (best["metric"], -best["loss"])


def distill(teacher, student, data: Mapping[str, np.ndarray] | str | os.PathLike,
            config: DistillConfig | None = None, *, labels=None,
            progress: Callable[[str], None] | None = None):
    """Distill ``teacher`` into ``student`` on ``data``; returns ``(student, DistillReport)``.

    ``teacher``: ONNX file / ``example:NAME`` / ModelProto, a loaded artifact, a Relax module,
    or precomputed logits [N, classes]. ``student``: ONNX (returned as a ModelProto with new
    initializers) or a Relax ``IRModule`` / ``ImportedModel`` (returned as the same kind).
    ``data``: ``.npz`` or mapping keyed by the student's input names, first axis = samples.
    ``labels``: integer classes [N] (array or ``.npy``), optional. ``progress`` receives one
    line per epoch.
    """
    config = config or DistillConfig()
    started = time.perf_counter()
    loaded, arrays = _load_student(student, data, config.batch_size)
    dataset = check_dataset(arrays, labels, loaded.inputs, loaded.classes)
    logits = teacher_logits(teacher, dataset, loaded.inputs)
    if logits.shape[1] != loaded.classes:
        raise DistillError(f"the teacher outputs {logits.shape[1]} classes per sample, the "
                           f"student {loaded.classes}",
                           hint="teacher and student must predict the same classes")
    rng = np.random.default_rng(config.seed)
    train_index, val_index = split(len(dataset), config.val_split, rng)
    run = _Run(loaded, dataset, logits, config)
    optimizer = OPTIMIZERS.get(config.optimizer)(config.weight_decay, config.momentum)
    coefficients = kd_loss_coefficients(config.temperature, config.alpha,
                                        dataset.labels is not None)
    trainer = Trainer(training_program(loaded, optimizer), loaded.param_values, optimizer,
                      coefficients)
    monitor = val_index if len(val_index) else train_index
    before = run.evaluate(trainer, monitor)
    best, best_values, best_epoch, history, stale = None, trainer.values(), 0, [], 0
    steps_per_epoch = math.ceil(len(train_index) / loaded.batch)
    total_steps, train_seconds, trained_samples = config.epochs * steps_per_epoch, 0.0, 0
    schedule = SCHEDULES.get(config.schedule)
    for epoch in range(1, config.epochs + 1):
        order = rng.permutation(train_index)
        losses, lr, tic = [], config.lr, time.perf_counter()
        for i, (rows, weights) in enumerate(batches(order, loaded.batch)):
            lr = schedule(config.lr, ((epoch - 1) * steps_per_epoch + i) / total_steps)
            loss = trainer.step(run.feed(rows), logits[rows], run.onehot[rows], weights, lr)
            losses.append(loss * float((weights > 0).sum()))
        seconds = time.perf_counter() - tic
        train_seconds += seconds
        trained_samples += len(train_index)
        current = run.evaluate(trainer, monitor)
        entry = {"epoch": epoch, "loss": sum(losses) / len(train_index), "lr": lr,
                 "val_loss": current["loss"], "val_metric": current["metric"],
                 "samples_per_second": len(train_index) / seconds}
        history.append(entry)
        if _better(current, best) or not len(val_index):
            best, best_values, best_epoch, stale = current, trainer.values(), epoch, 0
        else:
            stale += 1
        if progress:
            where = "val" if len(val_index) else "train"
            progress(f"epoch {epoch:3d}/{config.epochs}  loss {entry['loss']:.4f}  {where} loss "
                     f"{current['loss']:.4f}  {where} {run_metric_name(dataset)} "
                     f"{current['metric']:.2%}  lr {lr:.2e}  "
                     f"{entry['samples_per_second']:,.0f} samples/s")
        if len(val_index) and config.patience and stale >= config.patience:
            break
    trainer.load(best_values)
    after = run.evaluate(trainer, monitor)
    report = DistillReport(
        config=config.to_json(), metric=run_metric_name(dataset),
        samples={"train": len(train_index), "val": len(val_index)}, batch=loaded.batch,
        trained={"tensors": len(loaded.param_names),
                 "params": int(sum(v.size for v in loaded.param_values)),
                 "names": list(loaded.param_names), "frozen": list(loaded.frozen)},
        teacher=run.metric_of(logits[monitor], monitor), before=before, after=after,
        best_epoch=best_epoch, stopped_early=len(history) < config.epochs, history=history,
        samples_per_second=trained_samples / train_seconds if train_seconds else 0.0,
        seconds=time.perf_counter() - started)
    return loaded.write_back(best_values), report


def run_metric_name(data: Dataset) -> str:
    """``accuracy`` with labels, ``teacher_agreement`` without."""
    return "accuracy" if data.labels is not None else "teacher_agreement"
