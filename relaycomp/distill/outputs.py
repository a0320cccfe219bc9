"""Students with several outputs: one loss per output, chosen by output name.

    DistillConfig(output_losses=(("scores", "kd", 1.0), ("boxes", "mse", 1.0)))
    relaycomp distill ... --output-loss scores:kd --output-loss boxes:l1:0.5

Each student output is matched to the teacher output of the same name (or, when the teacher
names its outputs differently, the one in the same position) and gets one of the losses in
:data:`OUTPUT_LOSSES`:

- ``kd``: class scores: α·T²·KL(softmax(t/T) ‖ softmax(s/T)); the first ``kd`` output is the
  one the labels (cross-entropy, weight 1−α) and the accuracy refer to;
- ``mse`` / ``l1``: regression outputs (boxes, offsets, depth, ...): the mean squared /
  absolute difference from the teacher's output, divided by the teacher output's variance /
  mean absolute deviation over the training data, so that weight 1 means the same whether
  boxes are in pixels or in [0, 1].

Defaults, for outputs not named in the config: an output is ``kd`` when it is 2-D [batch, C]
with C ≥ 2 and its teacher counterpart looks like logits - the teacher's argmax over the data
lands on more than half of the C columns (class scores spread their argmax over the classes;
box coordinates, whose columns differ in meaning and scale, do not) - and ``mse`` otherwise.
A student with a single output keeps ``kd`` by default (the classifier case). The weight
multiplies the output's term (default 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tvm import relax
from tvm.relax import op as R

from relaycomp.distill.student import DistillError
from relaycomp.registry import Registry

OUTPUT_LOSSES: Registry[str] = Registry("output loss")
OUTPUT_LOSSES.add("kd", "class scores: temperature-softened KL divergence (+ labels)")
OUTPUT_LOSSES.add("mse", "regression: squared difference / the teacher output's variance")
OUTPUT_LOSSES.add("l1", "regression: absolute difference / the teacher output's mean absolute "
                        "deviation")


@dataclass(frozen=True)
class OutputLoss:
    """One student output's loss: its per-batch ``shape``, ``kind`` (``kd``, ``mse``, ``l1``),
    ``weight``, and for regression the ``scale`` its distance is divided by."""

    name: str
    shape: tuple[int, ...]
    kind: str
    weight: float = 1.0
    scale: float = 1.0


def parse_output_loss(text: str) -> tuple[str, str, float]:
    """``"NAME:KIND[:WEIGHT]"`` → ``(name, kind, weight)`` (split from the right)."""
    parts = text.rsplit(":", 2)
    weight = 1.0
    if len(parts) == 3:
        try:
            weight = float(parts[2])
        except ValueError:
            parts = [":".join(parts[:2]), parts[2]]  # the name holds a colon; no weight
        else:
            parts = parts[:2]
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise DistillError(f"--output-loss {text!r}: expected NAME:LOSS[:WEIGHT] with LOSS one "
                           f"of {', '.join(OUTPUT_LOSSES.names())}")
    return parts[0], parts[1], weight


def looks_like_logits(teacher: np.ndarray) -> bool:
    """True when ``teacher`` [N, C] (C ≥ 2) spreads its argmax over more than half the columns."""
    if teacher.ndim != 2 or teacher.shape[1] < 2:
        return False
    hit = np.unique(teacher.argmax(axis=1)).size
    return hit > teacher.shape[1] / 2


def _scale(kind: str, teacher: np.ndarray) -> float:
    if kind == "mse":
        spread = float(np.var(teacher, dtype=np.float64))
    else:
        spread = float(np.mean(np.abs(teacher - teacher.mean(axis=0)), dtype=np.float64))
    return spread if spread > 1e-12 else 1.0  # a constant teacher output: plain distance


def check_output_losses(names: Sequence[str], given: Sequence[tuple[str, str, float]]) -> None:
    """Refuse a ``given`` ``(name, kind, weight)`` triple whose loss is unknown or whose output
    the student does not have; needs only the output names, so a run checks it before it runs
    the teacher."""
    for name, kind, _ in given:
        OUTPUT_LOSSES.get(kind)  # an unknown loss lists the known ones
        if name not in names:
            raise DistillError(f"--output-loss {name}: the student has no output {name!r}",
                               hint=f"its outputs are {list(names)}")


def choose_output_losses(names: Sequence[str], shapes: Sequence[tuple[int, ...]],
                         teachers: Sequence[np.ndarray],
                         given: Sequence[tuple[str, str, float]]) -> list[OutputLoss]:
    """Each output's :class:`OutputLoss`: the ``given`` ``(name, kind, weight)`` triples
    first, the defaults of the module doc for the rest. Refuses unknown names, a ``kd`` loss
    on an output that is not [batch, C], and a run without any ``kd`` output."""
    check_output_losses(names, given)
    chosen = {name: (kind, weight) for name, kind, weight in given}
    losses = []
    for name, shape, teacher in zip(names, shapes, teachers):
        if name in chosen:
            kind, weight = chosen[name]
        else:
            logits = len(names) == 1 and len(shape) == 2 or looks_like_logits(teacher)
            kind, weight = ("kd" if logits else "mse"), 1.0
        if kind == "kd" and (len(shape) != 2 or shape[1] < 2):
            raise DistillError(f"output {name!r} has shape {list(shape)}: the kd loss needs "
                               f"class scores [batch, classes]",
                               hint=f"use --output-loss {name}:mse (or l1)")
        scale = 1.0 if kind == "kd" else _scale(kind, teacher)
        losses.append(OutputLoss(name, tuple(shape), kind, float(weight), scale))
    if not any(loss.kind == "kd" for loss in losses):
        raise DistillError("no student output is trained as class scores (kd)",
                           hint="name the class-score output with --output-loss NAME:kd; "
                                "relaycomp distills classifiers and detectors, not pure "
                                "regressors")
    return losses


def label_output(losses: Sequence[OutputLoss]) -> int:
    """The index of the output labels and accuracy refer to: the first ``kd`` one."""
    return next(i for i, loss in enumerate(losses) if loss.kind == "kd")


def regression_term(loss: OutputLoss, student: relax.Expr, teacher: relax.Expr) -> relax.Expr:
    """Per-sample ``weight · distance / scale`` of a ``mse`` or ``l1`` output (Relax)."""
    axes = list(range(1, len(loss.shape)))
    difference = R.subtract(student, teacher)
    distance = (R.multiply(difference, difference) if loss.kind == "mse"
                else R.abs(difference))
    per_sample = R.mean(distance, axis=axes) if axes else distance
    return R.multiply(per_sample, relax.const(loss.weight / loss.scale, "float32"))


def regression_reference(loss: OutputLoss, student: np.ndarray,
                         teacher: np.ndarray) -> np.ndarray:
    """The numpy twin of :func:`regression_term`, in float64."""
    difference = (np.asarray(student, np.float64) - np.asarray(teacher, np.float64))
    distance = difference**2 if loss.kind == "mse" else np.abs(difference)
    per_sample = distance.reshape(len(distance), -1).mean(axis=1)
    return per_sample * loss.weight / loss.scale


def match_teacher_outputs(student: Sequence[str], teacher: Sequence[str]) -> list[int]:
    """For each student output, the index of its teacher output: same name, else position."""
    if all(name in teacher for name in student):
        return [list(teacher).index(name) for name in student]
    if len(teacher) >= len(student):
        return list(range(len(student)))
    raise DistillError(f"the student has {len(student)} outputs {list(student)}, the teacher "
                       f"{len(teacher)} {list(teacher)}",
                       hint="name the teacher's outputs as the student's, or give it as many")


def check_teacher_shapes(names: Sequence[str], student: Sequence[tuple],
                         teacher: Sequence[tuple]) -> None:
    """Teacher and student outputs (``names``, shapes with the batch first) must agree per
    sample."""
    for name, mine, theirs in zip(names, student, teacher):
        if tuple(mine[1:]) == tuple(theirs[1:]):
            continue
        if len(mine) == len(theirs) == 2:
            raise DistillError(f"the teacher outputs {theirs[1]} classes per sample, the "
                               f"student {mine[1]} (output {name!r})",
                               hint="teacher and student must predict the same classes")
        raise DistillError(f"output {name!r}: the teacher's is {list(theirs[1:])} per sample, "
                           f"the student's {list(mine[1:])}",
                           hint="teacher and student outputs must have the same shapes")
