"""Knowledge distillation: retrain a student to match a teacher, on TVM, before compiling it.

    student, report = relaycomp.distill("teacher.onnx", pruned_student, "train.npz", labels=y)
    print(report.summary())

The teacher runs once over the data (compiled by relaycomp) and its logits are cached for the
whole run; the student trains on TVM (:mod:`relaycomp.distill.train`) with the loss
α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1−α)·CE(s, y) (pure soft targets without labels), in
shuffled mini-batches. With the defaults nothing needs tuning: a learning-rate range test
(:mod:`relaycomp.distill.lr_find`) picks the rate, and the run warms up, holds the rate while
the smoothed validation loss improves, anneals and ends (:mod:`relaycomp.distill.budget`),
keeping the best validation weights. Same seed, same data → the same student.

An ONNX student (path, ``example:NAME`` or ModelProto) comes back as an ONNX ModelProto: the same
graph with new initializers. A Relax student (``IRModule`` / ``ImportedModel``) comes back as a
Relax module. ``alpha=0`` with labels is plain supervised training (the from-scratch baseline).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from relaycomp.distill.augment import augmenter, parse_augment
from relaycomp.distill.budget import Budget
from relaycomp.distill.data import check_dataset, check_label_range, sample_shapes, split
from relaycomp.distill.hints import (
    HINT_LOSSES,
    check_hint_shapes,
    initial_adapter,
    standardize,
)
from relaycomp.distill.loss import kd_loss_coefficients
from relaycomp.distill.lr_find import find_lr
from relaycomp.distill.optim import OPTIMIZERS, SCHEDULES
from relaycomp.distill.outputs import (
    OUTPUT_LOSSES,
    check_output_losses,
    check_teacher_shapes,
    choose_output_losses,
    label_output,
)
from relaycomp.distill.report import DistillReport
from relaycomp.distill.session import Session, run_metric_name, train_epochs
from relaycomp.distill.student import DistillError, Student, student_from_onnx, student_from_relax
from relaycomp.distill.teacher import batch_teacher, teacher_outputs
from relaycomp.distill.train import Trainer, training_program

__all__ = ["DistillConfig", "DistillError", "DistillReport", "distill"]


@dataclass(frozen=True)
class DistillConfig:
    """How to distill. The defaults need no tuning for small classifiers.

    ``temperature`` T > 0 softens both distributions; ``alpha`` in [0, 1] weighs the soft-target
    term against cross-entropy on labels (ignored without labels: pure soft targets).
    ``lr``: the peak learning rate; None (default) finds it with a range test on the training
    data. ``epochs``: None (default) trains until the smoothed validation loss stops improving
    for ``patience`` epochs, then anneals, capped at ``max_epochs``; a number fixes the budget
    (``patience`` then stops early, 0: never). ``warmup``: epochs of linear warm-up.
    ``batch_size`` applies when the student's batch dim is symbolic (a fixed one is used as is).
    ``optimizer``: ``adam`` or ``sgd`` (with ``momentum``); ``schedule``: the decay's shape,
    ``cosine``, ``step`` or ``constant``. ``val_split``: fraction held out for validation.
    ``hints``: ``(teacher tensor, student tensor)`` pairs matched by ``hint_loss`` (``mse``,
    ``standardized``, ``cosine`` or ``attention``) with weight ``hint_weight``
    (:mod:`relaycomp.distill.hints`). ``augment``: image augmentations, e.g.
    ``("crop", "flip")`` (:mod:`relaycomp.distill.augment`).
    ``output_losses``: ``(output name, loss, weight)`` triples for students with several
    outputs - ``kd`` for class scores, ``mse``/``l1`` for regression outputs such as boxes;
    outputs not named get the defaults of :mod:`relaycomp.distill.outputs`.
    """

    temperature: float = 4.0
    alpha: float = 0.7
    epochs: int | None = None
    max_epochs: int = 60
    lr: float | None = None
    batch_size: int = 32
    val_split: float = 0.1
    seed: int = 0
    optimizer: str = "adam"
    schedule: str = "cosine"
    warmup: float = 1.0
    weight_decay: float = 0.0
    momentum: float = 0.9
    patience: int = 5
    hints: tuple[tuple[str, str], ...] = ()
    hint_loss: str = "mse"
    hint_weight: float = 1.0
    augment: tuple[str, ...] = ()
    output_losses: tuple[tuple[str, str, float], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "hints", tuple(tuple(pair) for pair in self.hints))
        object.__setattr__(self, "output_losses", tuple(
            (str(entry[0]), str(entry[1]), float(entry[2]) if len(entry) > 2 else 1.0)
            for entry in self.output_losses))
        object.__setattr__(self, "augment", tuple(self.augment))
        checks = [(self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
                  (0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}"),
                  (self.epochs is None or self.epochs >= 1,
                   f"epochs must be at least 1, got {self.epochs}"),
                  (self.max_epochs >= 1, f"max_epochs must be at least 1, got {self.max_epochs}"),
                  (self.lr is None or self.lr > 0, f"lr must be > 0, got {self.lr}"),
                  (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
                  (0.0 <= self.val_split < 1.0,
                   f"val_split must be in [0, 1), got {self.val_split}"),
                  (self.warmup >= 0, f"warmup must be >= 0 epochs, got {self.warmup}"),
                  (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
                  (0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}"),
                  (self.patience >= 0, f"patience must be >= 0, got {self.patience}"),
                  (self.hint_weight >= 0, f"hint_weight must be >= 0, got {self.hint_weight}"),
                  (all(len(pair) == 2 for pair in self.hints),
                   f"hints must be (teacher tensor, student tensor) pairs, got {self.hints}"),
                  (all(weight >= 0 for _, _, weight in self.output_losses),
                   f"output loss weights must be >= 0, got {self.output_losses}"),
                  (len({name for name, _, _ in self.output_losses}) == len(self.output_losses),
                   f"an output is named twice in {self.output_losses}")]
        for ok, message in checks:
            if not ok:
                raise DistillError(message)
        OPTIMIZERS.get(self.optimizer)  # unknown names raise, listing the known ones
        SCHEDULES.get(self.schedule)
        HINT_LOSSES.get(self.hint_loss)
        for _, kind, _ in self.output_losses:
            OUTPUT_LOSSES.get(kind)
        parse_augment(self.augment)  # unknown names and bad arguments raise here

    def to_json(self) -> dict:
        """JSON form for reports."""
        return asdict(self)


def _standardizing(teach, count: int, stats: list):
    """``teach`` with its hinted tensors (after ``count`` outputs) standardized by ``stats``."""
    if not any(stat is not None for stat in stats):
        return teach

    def run(feed):
        results = teach(feed)
        return [*results[:count], *(standardize(np.asarray(f, np.float32), stat)[0]
                                    for f, stat in zip(results[count:], stats))]

    return run


def _is_onnx(model) -> bool:
    return isinstance(model, (str, os.PathLike, onnx.ModelProto))


def _load_student(student, data, batch_size: int, features) -> tuple[Student, dict]:
    if _is_onnx(student):
        from relaycomp.frontend.examples import resolve_model_path
        from relaycomp.frontend.onnx_import import graph_inputs, load_onnx

        if not isinstance(student, onnx.ModelProto):
            student = load_onnx(resolve_model_path(student))
        arrays, shapes = sample_shapes(data, graph_inputs(student))
        return student_from_onnx(student, shapes, batch_size, features), arrays
    if features:
        raise DistillError("hints need the student as an ONNX model",
                           hint="give the student's .onnx file or ModelProto")
    loaded = student_from_relax(student)
    arrays, _ = sample_shapes(data, loaded.inputs)
    return loaded, arrays


def _learning_rate(config: DistillConfig, session: Session, trainer: Trainer,
                   train_index: np.ndarray) -> dict:
    if config.lr is not None:
        return {"value": config.lr, "found": False, "reason": "given"}
    sweep_rng = np.random.default_rng([config.seed, 1])  # the run's own shuffling is unaffected
    finding = find_lr(trainer, session.stepper(trainer, train_index, sweep_rng))
    return {"value": finding.lr, "found": True,
            "reason": f"range test over {finding.steps} steps: {finding.reason}",
            "sweep": finding.to_json()}


def distill(teacher, student, data: Mapping[str, np.ndarray] | str | os.PathLike,
            config: DistillConfig | None = None, *, labels=None,
            progress: Callable[[str], None] | None = None):
    """Distill ``teacher`` into ``student`` on ``data``; returns ``(student, DistillReport)``.

    ``teacher``: ONNX file / ``example:NAME`` / ModelProto, a loaded artifact, a Relax module,
    or precomputed outputs (logits [N, classes]; with several outputs a list or a mapping by
    output name). ``student``: ONNX (returned as a ModelProto with new
    initializers) or a Relax ``IRModule`` / ``ImportedModel`` (returned as the same kind).
    ``data``: ``.npz`` or mapping keyed by the student's input names, first axis = samples.
    ``labels``: integer classes [N] (array or ``.npy``), optional. ``progress`` receives one
    line per epoch (and one for the learning rate).
    """
    config = config or DistillConfig()
    with contextlib.ExitStack() as stack:  # the per-batch teacher's library, when augmenting
        return _distill(teacher, student, data, config, labels, progress, stack)


def _distill(teacher, student, data, config: DistillConfig, labels, progress,
             stack: contextlib.ExitStack):
    started = time.perf_counter()
    hinted = [s for _, s in config.hints]
    loaded, arrays = _load_student(student, data, config.batch_size, hinted)
    dataset = check_dataset(arrays, labels, loaded.inputs, None)
    names = loaded.output_names
    check_output_losses(names, config.output_losses)  # before the teacher runs
    teachers = teacher_outputs(teacher, dataset, loaded.inputs, [t for t, _ in config.hints],
                               outputs=names)
    teachers, features = teachers[:len(names)], teachers[len(names):]
    check_teacher_shapes(names, loaded.output_shapes,
                         [(loaded.batch, *t.shape[1:]) for t in teachers])
    outputs = choose_output_losses(names, loaded.output_shapes, teachers, config.output_losses)
    label = label_output(outputs)
    check_label_range(dataset.labels, outputs[label].shape[1])
    rng = np.random.default_rng(config.seed)
    train_index, val_index = split(len(dataset), config.val_split, rng)
    stats = [None] * len(features)
    if config.hint_loss == "standardized":  # per channel, over the training samples
        stats = [standardize(f[train_index])[1] for f in features]
        features = [standardize(f, stat)[0] for f, stat in zip(features, stats)]
    augment = augmenter(config.augment)
    teach = None
    if augment is not None:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="relaycomp-")))
        teach = _standardizing(batch_teacher(teacher, dataset, [t for t, _ in config.hints],
                                             loaded.batch, folder, names), len(names), stats)
    session = Session(loaded, dataset, teachers, config, features, augment, teach, outputs)
    optimizer = OPTIMIZERS.get(config.optimizer)(config.weight_decay, config.momentum)
    coefficients = kd_loss_coefficients(config.temperature, config.alpha,
                                        dataset.labels is not None)
    hints = check_hint_shapes(config.hints, [(loaded.batch, *f.shape[1:]) for f in features],
                              loaded.feature_shapes, config.hint_loss)
    adapters = [initial_adapter(h, np.random.default_rng([config.seed, 2]))
                for h in hints if h.adapter]
    if hints:
        coefficients.append(np.array(config.hint_weight, np.float32))
    trainer = Trainer(training_program(loaded, optimizer, hints, outputs),
                      loaded.param_values + adapters, optimizer, coefficients)
    monitor = val_index if len(val_index) else train_index
    before = session.evaluate(trainer, monitor)
    lr = _learning_rate(config, session, trainer, train_index)
    if progress:
        progress(f"learning rate {lr['value']:.2e} ({lr['reason']})")
    steps_per_epoch = -(-len(train_index) // loaded.batch)
    budget = Budget(lr["value"], steps_per_epoch, config.epochs, config.max_epochs,
                    config.patience, config.warmup, SCHEDULES.get(config.schedule),
                    validated=bool(len(val_index)))
    trained = train_epochs(session, trainer, budget, train_index, monitor, rng, progress)
    after = session.evaluate(trainer, monitor)
    warning = budget.warning()
    history = trained["history"]
    report = DistillReport(
        config=config.to_json(), metric=run_metric_name(dataset),
        samples={"train": len(train_index), "val": len(val_index)}, batch=loaded.batch,
        trained={"tensors": len(loaded.param_names), "adapters": len(adapters),
                 "hints": [list(pair) for pair in config.hints],
                 "params": int(sum(v.size for v in loaded.param_values)),
                 "names": list(loaded.param_names), "frozen": list(loaded.frozen),
                 "kernels": {k: trainer.program.schedule[k]
                             for k in ("scheduled", "unscheduled", "by_rule")}},
        teacher=session.metric_of(teachers[label][monitor], monitor), before=before,
        after=after,
        best_epoch=trained["best_epoch"],
        stopped_early=config.epochs is not None and len(history) < config.epochs,
        lr=lr, warnings=[warning] if warning else [], history=history,
        outputs=[{"name": o.name, "loss": o.kind, "weight": o.weight, "scale": o.scale}
                 for o in outputs],
        samples_per_second=trained["samples"] / trained["seconds"] if trained["seconds"] else 0.0,
        seconds=time.perf_counter() - started)
    return loaded.write_back(trainer.values()[:len(loaded.param_values)]), report
