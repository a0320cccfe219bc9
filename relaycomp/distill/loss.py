"""The knowledge-distillation loss, built in Relax, and its numpy reference.

    loss = Σ_i w_i · [ α·T²·KL(softmax(t_i/T) ‖ softmax(s_i/T)) + (1−α)·CE(s_i, y_i) ]

(for a student with several outputs, one term per output: :mod:`relaycomp.distill.outputs`)

``s``: student logits [B, C]; ``t``: teacher logits [B, C] (fixed, no gradient flows into
them); ``y``: one-hot labels [B, C]; ``w``: per-sample weights [B] — ``1/n`` for the ``n`` real
samples of a batch and 0 for the padding that fills a static-shape batch, so the loss is the
mean over real samples. A sample without a label has an all-zero ``y``: only its soft-target
term counts. Without any labels α is 1: the pure soft-target loss. T and α are runtime scalars.
The T² factor keeps the soft-target gradients on the scale of the hard-label ones (Hinton 2015).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tvm import relax
from tvm.relax import op as R

from relaycomp.distill.hints import HINT_LOSSES, HintShape, apply_adapter
from relaycomp.distill.outputs import (
    OutputLoss,
    label_output,
    regression_reference,
    regression_term,
)


def kd_loss_coefficients(temperature: float, alpha: float, labelled: bool = True) -> list:
    """The loss's runtime scalars ``(1/T, α·T², 1−α)`` as float32 arrays (α=1 without labels)."""
    alpha = alpha if labelled else 1.0
    return [np.array(value, np.float32)
            for value in (1.0 / temperature, alpha * temperature**2, 1.0 - alpha)]


def kd_loss_function(batch: int, classes: int, hints: Sequence[HintShape] = ()) -> relax.Function:
    """The loss of a single-output classifier student: :func:`distill_loss_function` with one
    ``kd`` output [batch, classes]."""
    return distill_loss_function(batch, [OutputLoss("logits", (batch, classes), "kd")], hints)


def distill_loss_function(batch: int, outputs: Sequence[OutputLoss],
                          hints: Sequence[HintShape] = ()) -> relax.Function:
    """``loss(s..., f..., t..., y, w, inverse_t, soft_weight, hard_weight[, hint_weight, g...,
    adapters...]) -> scalar``, one dataflow block (for AppendLoss). T and α are arguments
    (:func:`kd_loss_coefficients`), so one compiled program serves every temperature and mix.

    ``s``/``t``: the student's and the teacher's outputs, one per entry of ``outputs``
    (:mod:`relaycomp.distill.outputs`): each ``kd`` output adds its soft-target term, the
    first one also the cross-entropy on the labels ``y``; each ``mse``/``l1`` output adds its
    weighted, scaled distance. With ``hints`` (:mod:`relaycomp.distill.hints`): ``f`` are the
    student's hinted tensors (backbone outputs after its own outputs), ``g`` the teacher's,
    ``adapters`` the 1x1 adapters of the hints that have one; ``hint_weight`` scales their
    summed distances."""
    scalar = relax.TensorType((), "float32")
    label = label_output(outputs)
    students = [relax.Var(f"s{i}", relax.TensorType(o.shape, "float32"))
                for i, o in enumerate(outputs)]
    features = [relax.Var(f"f{i}", relax.TensorType(h.student, "float32"))
                for i, h in enumerate(hints)]
    teachers = [relax.Var(f"t{i}", relax.TensorType(o.shape, "float32"))
                for i, o in enumerate(outputs)]
    y = relax.Var("y", relax.TensorType(outputs[label].shape, "float32"))
    w = relax.Var("w", relax.TensorType((batch,), "float32"))
    inverse_t, soft_weight, hard_weight = (relax.Var(name, scalar)
                                           for name in ("inverse_t", "soft_weight",
                                                        "hard_weight"))
    params = [*students, *features, *teachers, y, w, inverse_t, soft_weight, hard_weight]
    targets, adapters = [], []
    if hints:
        hint_weight = relax.Var("hint_weight", scalar)
        targets = [relax.Var(f"g{i}", relax.TensorType(h.teacher, "float32"))
                   for i, h in enumerate(hints)]
        adapters = [relax.Var(f"adapter{i}", relax.TensorType(h.adapter, "float32"))
                    if h.adapter else None for i, h in enumerate(hints)]
        params += [hint_weight, *targets, *[a for a in adapters if a is not None]]
    bb = relax.BlockBuilder()
    with bb.function("kd_loss", params):
        with bb.dataflow():
            terms = []
            for index, (output, s, t) in enumerate(zip(outputs, students, teachers)):
                if output.kind != "kd":
                    terms.append(bb.emit(regression_term(output, s, t)))
                    continue
                log_ps = bb.emit(R.nn.log_softmax(R.multiply(s, inverse_t), axis=-1))
                log_pt = bb.emit(R.nn.log_softmax(R.multiply(t, inverse_t), axis=-1))
                kl = bb.emit(R.sum(R.multiply(R.exp(log_pt), R.subtract(log_pt, log_ps)),
                                   axis=[1]))
                term = R.multiply(kl, soft_weight)
                if output.weight != 1.0:
                    term = R.multiply(term, relax.const(output.weight, "float32"))
                terms.append(bb.emit(term))
                if index == label:
                    log_p = bb.emit(R.nn.log_softmax(s, axis=-1))
                    ce = bb.emit(R.negative(R.sum(R.multiply(y, log_p), axis=[1])))
                    terms.append(bb.emit(R.multiply(ce, hard_weight)))
            for hint, feature, target, adapter in zip(hints, features, targets, adapters):
                mapped = bb.emit(apply_adapter(feature, adapter))
                distance = bb.emit(HINT_LOSSES.get(hint.loss)(mapped, target))
                terms.append(bb.emit(R.multiply(distance, hint_weight)))
            per_sample = terms[0]
            for term in terms[1:]:
                per_sample = bb.emit(R.add(per_sample, term))
            loss = bb.emit_output(R.sum(R.multiply(per_sample, w)))
        bb.emit_func_output(loss)
    return bb.get()["kd_loss"]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def kd_loss_per_sample(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray | None,
                       temperature: float, alpha: float) -> np.ndarray:
    """Reference per-sample loss in float64 (``labels``: integer classes, -1 for none; or None)."""
    student, teacher = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
    if labels is None:
        alpha = 1.0
    log_ps = _log_softmax(student / temperature)
    log_pt = _log_softmax(teacher / temperature)
    loss = alpha * temperature**2 * (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=-1)
    if alpha < 1.0:
        labels = np.asarray(labels, np.int64)
        ce = -_log_softmax(student)[np.arange(len(student)), np.maximum(labels, 0)]
        loss = loss + (1.0 - alpha) * np.where(labels >= 0, ce, 0.0)
    return loss


def distill_loss_per_sample(students: Sequence[np.ndarray], teachers: Sequence[np.ndarray],
                            labels: np.ndarray | None, temperature: float, alpha: float,
                            outputs: Sequence[OutputLoss]) -> np.ndarray:
    """Reference per-sample loss of a student with the ``outputs`` losses, in float64 (the
    numpy twin of :func:`distill_loss_function` without hints)."""
    label = label_output(outputs)
    total = np.zeros(len(students[0]))
    for index, (output, s, t) in enumerate(zip(outputs, students, teachers)):
        if output.kind != "kd":
            total += regression_reference(output, s, t)
            continue
        mix = alpha if labels is not None else 1.0
        total += kd_loss_per_sample(s, t, None, temperature, 1.0) * mix * output.weight
        if index == label and labels is not None and alpha < 1.0:
            # alpha 0: the cross-entropy alone (0 for unlabelled samples)
            total += (1.0 - alpha) * kd_loss_per_sample(s, t, labels, temperature, 0.0)
    return total


def kd_loss_reference(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray | None,
                      temperature: float, alpha: float) -> float:
    """Reference batch loss: the mean of :func:`kd_loss_per_sample`."""
    return float(kd_loss_per_sample(student, teacher, labels, temperature, alpha).mean())
