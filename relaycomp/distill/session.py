"""One distillation run: its data, the teacher's outputs, the metrics, and the epoch loop.

The loop asks a :class:`~relaycomp.distill.budget.Budget` for every step's learning rate and,
after every epoch, whether to stop; it keeps the weights of the best validation epoch
(accuracy, then loss; the loss alone for a student with regression outputs). Without a
validation split the training data is monitored instead.

Progress is either a callable that receives one line per epoch (``progress=print`` from
Python) or :class:`EpochBars`, the command line's tqdm bar per epoch on stderr::

    student, report = distill(teacher, student, data, progress=EpochBars())
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
from tqdm import tqdm

from relaycomp.distill.budget import Budget
from relaycomp.distill.data import Dataset, batches
from relaycomp.distill.loss import distill_loss_per_sample
from relaycomp.distill.outputs import OutputLoss, label_output, regression_reference
from relaycomp.distill.student import Student
from relaycomp.distill.train import Trainer


def run_metric_name(data: Dataset) -> str:
    """``accuracy`` with labels, ``teacher_agreement`` without."""
    return "accuracy" if data.labels is not None else "teacher_agreement"


class Session:
    """One run's data, teacher outputs and metrics (temperature and α from ``config``)."""

    def __init__(self, student: Student, data: Dataset, teachers: Sequence[np.ndarray], config,
                 features: Sequence[np.ndarray] = (),
                 augment: Callable[[list, np.random.Generator], list] | None = None,
                 teach: Callable[[dict], list] | None = None,
                 outputs: Sequence[OutputLoss] = ()):
        """``teachers``/``features``: the teacher's outputs (one per student output) and
        hinted tensors on every sample; ``outputs``: each output's loss (default: ``kd`` on
        the single output); ``augment(inputs, rng)`` transforms a training batch, which
        ``teach(feed)`` (the teacher) then labels afresh."""
        self.student, self.data, self.config = student, data, config
        self.teachers = list(teachers)
        self.outputs = list(outputs) or [OutputLoss(student.output_names[0],
                                                    student.output_shapes[0], "kd")]
        self.label = label_output(self.outputs)
        self.teacher = self.teachers[self.label]  # the class scores labels refer to
        self.features, self.augment, self.teach = list(features), augment, teach
        self.names = [s.name for s in student.inputs]
        classes = self.outputs[self.label].shape[1]
        self.onehot = np.zeros((len(data), classes), np.float32)
        if data.labels is not None:  # rows of unlabelled samples (-1) stay all-zero
            labelled = data.labels >= 0
            self.onehot[np.flatnonzero(labelled), data.labels[labelled]] = 1.0

    def feed(self, rows: np.ndarray) -> list[np.ndarray]:
        """The student's inputs for the samples ``rows``."""
        return [self.data.inputs[name][rows] for name in self.names]

    def step(self, trainer: Trainer, rows: np.ndarray, weights: np.ndarray, lr: float,
             rng: np.random.Generator) -> float:
        """One training step on the samples ``rows`` (augmented if asked); the batch loss."""
        inputs = self.feed(rows)
        teacher = [*(t[rows] for t in self.teachers), *(f[rows] for f in self.features)]
        if self.augment is not None:
            inputs = self.augment(inputs, rng)
            teacher = [np.asarray(a, np.float32) for a in self.teach(dict(zip(self.names,
                                                                              inputs)))]
        count = len(self.teachers)
        return trainer.step(inputs, teacher[:count], self.onehot[rows], weights, lr,
                            teacher[count:])

    def stepper(self, trainer: Trainer, index: np.ndarray, rng: np.random.Generator):
        """``step(lr)`` on an endless supply of shuffled batches (for the learning-rate sweep)."""
        def supply():
            while True:
                yield from batches(rng.permutation(index), self.student.batch)

        batch_supply = supply()

        def step(lr: float) -> float:
            rows, weights = next(batch_supply)
            return self.step(trainer, rows, weights, lr, rng)

        return step

    def evaluate(self, trainer: Trainer, index: np.ndarray) -> dict:
        """Loss and metric of the current student on ``index``; with several outputs also
        each regression output's term (``outputs``: name → mean weighted distance)."""
        results = [[a[:int((w > 0).sum())] for a in trainer.predict_outputs(self.feed(rows))]
                   for rows, w in batches(index, self.student.batch)]
        predicted = [np.concatenate(column) for column in zip(*results)]
        teachers = [t[index] for t in self.teachers]
        labels = self.data.labels[index] if self.data.labels is not None else None
        loss = distill_loss_per_sample(predicted, teachers, labels, self.config.temperature,
                                       self.config.alpha, self.outputs).mean()
        result = {"loss": float(loss), "metric": self.metric_of(predicted[self.label], index)}
        if len(self.outputs) > 1:
            result["outputs"] = {
                o.name: float(regression_reference(o, s, t).mean()) if o.kind != "kd" else
                float((s.argmax(axis=1) == t.argmax(axis=1)).mean())
                for o, s, t in zip(self.outputs, predicted, teachers)}
        return result

    def metric_of(self, logits: np.ndarray, index: np.ndarray) -> float:
        """Accuracy on the labelled samples of ``index`` (agreement with the teacher without)."""
        predicted = logits.argmax(axis=1)
        labels = self.data.labels[index] if self.data.labels is not None else None
        if labels is None or not (labels >= 0).any():
            return float((predicted == self.teacher[index].argmax(axis=1)).mean())
        known = labels >= 0
        return float((predicted[known] == labels[known]).mean())


class EpochBars:
    """A tqdm bar per epoch on stderr, counting its training steps (the running loss beside
    it) and left on screen with the epoch's validation numbers when the epoch ends.

    Shown only when stderr is a terminal (``disable=None``) and ``enabled`` (``--quiet`` turns
    it off). Called with a line (the learning rate found), it prints the line above the bars,
    under the same conditions."""

    def __init__(self, enabled: bool = True):
        """``enabled=False``: nothing is shown."""
        self.enabled = enabled

    def __call__(self, line: str) -> None:
        """A line of its own on stderr, when bars are shown."""
        if self.enabled and sys.stderr.isatty():
            tqdm.write(line, file=sys.stderr)

    def epoch(self, epoch: int, cap: int, steps: int) -> tqdm:
        """The bar of epoch ``epoch`` (of at most ``cap``), ``steps`` training steps long."""
        return tqdm(total=steps, desc=f"epoch {epoch}/{cap}", unit="step", file=sys.stderr,
                    disable=None if self.enabled else True, leave=True, dynamic_ncols=True)


def _better(new: dict, best: dict | None, by_loss: bool) -> bool:
    if best is None:
        return True
    if by_loss:
        return new["loss"] < best["loss"]
    return (new["metric"], -new["loss"]) > (best["metric"], -best["loss"])


def train_epochs(session: Session, trainer: Trainer, budget: Budget, train_index: np.ndarray,
                 monitor: np.ndarray, rng: np.random.Generator,
                 progress: Callable[[str], None] | None) -> dict:
    """Train until ``budget`` says stop; the trainer ends holding the best weights.

    ``progress``: a callable given one line per epoch, or :class:`EpochBars`.

    Returns ``history`` (one entry per epoch), ``best_epoch``, ``seconds`` and ``samples``
    (time spent in and samples seen by training steps)."""
    best, best_values, best_epoch, history = None, trainer.values(), 0, []
    train_seconds, trained_samples, step = 0.0, 0, 0
    validated = not np.array_equal(monitor, train_index)
    where, name = ("val" if validated else "train"), run_metric_name(session.data)
    cap = budget.max_epochs
    bars = progress if isinstance(progress, EpochBars) else None
    steps_per_epoch = -(-len(train_index) // session.student.batch)
    while True:
        epoch = len(history) + 1
        losses, lr, tic = [], 0.0, time.perf_counter()
        bar = bars.epoch(epoch, cap, steps_per_epoch) if bars else None
        for rows, weights in batches(rng.permutation(train_index), session.student.batch):
            lr = budget.lr(step)
            loss = session.step(trainer, rows, weights, lr, rng)
            losses.append(loss * float((weights > 0).sum()))
            step += 1
            if bar is not None:
                bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
                bar.update(1)
        seconds = time.perf_counter() - tic
        train_seconds += seconds
        trained_samples += len(train_index)
        current = session.evaluate(trainer, monitor)
        entry = {"epoch": epoch, "loss": sum(losses) / len(train_index), "lr": lr,
                 "val_loss": current["loss"], "val_metric": current["metric"],
                 "samples_per_second": len(train_index) / seconds,
                 "annealing": budget.annealing}
        history.append(entry)
        # the metric covers the class scores only: with regression outputs, the loss decides
        by_loss = any(o.kind != "kd" for o in session.outputs)
        if _better(current, best, by_loss) or not validated:  # unvalidated: the latest weights
            best, best_values, best_epoch = current, trainer.values(), epoch
        stop = budget.end_epoch(current["loss"])
        phase = "  (annealing)" if entry["annealing"] else ""
        numbers = (f"loss {entry['loss']:.4f}  {where} loss {current['loss']:.4f}  {where} "
                   f"{name} {current['metric']:.2%}  lr {lr:.2e}  "
                   f"{entry['samples_per_second']:,.0f} samples/s{phase}")
        if bar is not None:
            bar.set_postfix_str(numbers, refresh=False)
            bar.close()
        elif progress:
            progress(f"epoch {epoch:3d}/{cap}  {numbers}")
        if stop:
            break
    trainer.load(best_values)
    return {"history": history, "best_epoch": best_epoch, "seconds": train_seconds,
            "samples": trained_samples}
