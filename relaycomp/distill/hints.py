"""Feature distillation (FitNets hints): match named intermediate tensors of teacher and student.

    DistillConfig(hints=(("/relu2/Relu_output_0", "r2"),), hint_loss="mse", hint_weight=1.0)
    relaycomp distill ... --hint /relu2/Relu_output_0:r2

Each hint pairs a teacher tensor with a student tensor of the same shape apart from the channel
axis (axis 1). When the channel counts differ (after pruning they often do) a learned 1x1
adapter (a ``[C_teacher, C_student, 1, 1]`` convolution, or a ``[C_teacher, C_student]``
matrix for ``[batch, C]`` tensors) maps the student's channels onto the teacher's; it trains
with the student and is dropped afterwards. Per sample, a hint adds
``hint_weight · distance(adapter(student), teacher)`` to the KD loss, where the distance is
registered in :data:`HINT_LOSSES`:

- ``mse``: mean squared difference of the raw tensors;
- ``standardized``: mean squared difference from the teacher tensor standardized per channel
  (mean and standard deviation over the training data, :func:`standardize`), always through a
  learned adapter (FitNets' regressor), so neither the teacher's scale nor the student's
  channel count matters;
- ``cosine``: 1 − cosine similarity of the flattened tensors;
- ``attention``: attention transfer (Zagoruyko & Komodakis 2017): the squared distance of the
  spatial attention maps ``mean_c(f²)``, each flattened and scaled to unit length; channel
  counts need not agree (no adapter); [B, C, H, W] tensors only.

The teacher's tensors are computed once, with its outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tvm import relax
from tvm.relax import op as R

from relaycomp.distill.student import DistillError
from relaycomp.registry import Registry

HINT_LOSSES: Registry[Callable] = Registry("hint loss")
_EPSILON = 1e-12


@dataclass(frozen=True)
class HintShape:
    """One hint's per-batch shapes: the student tensor, the teacher tensor, the distance."""

    student: tuple[int, ...]
    teacher: tuple[int, ...]
    loss: str

    @property
    def adapter(self) -> tuple[int, ...] | None:
        """The adapter's weight shape, or None when the channel counts already agree (or the
        distance needs none: ``attention``; ``standardized`` always has one)."""
        if self.loss == "attention" or (self.student[1] == self.teacher[1]
                                        and self.loss != "standardized"):
            return None
        extra = (1,) * (len(self.student) - 2)
        return (self.teacher[1], self.student[1], *extra)


def parse_hint(text: str) -> tuple[str, str]:
    """``"TEACHER_TENSOR:STUDENT_TENSOR"`` → the pair (split at the last colon)."""
    teacher, colon, student = text.rpartition(":")
    if not colon or not teacher or not student:
        raise DistillError(f"--hint {text!r}: expected TEACHER_TENSOR:STUDENT_TENSOR")
    return teacher, student


def check_hint_shapes(pairs: Sequence[tuple[str, str]], teacher: Sequence[tuple],
                      student: Sequence[tuple], loss: str) -> list[HintShape]:
    """Per hint, check the shapes agree except for channels; their :class:`HintShape`."""
    shapes = []
    for (t_name, s_name), t_shape, s_shape in zip(pairs, teacher, student):
        t_shape, s_shape = tuple(t_shape), tuple(s_shape)
        if len(t_shape) < 2 or len(t_shape) != len(s_shape) or t_shape[2:] != s_shape[2:] or (
                len(s_shape) > 2 and len(s_shape) != 4):
            raise DistillError(
                f"hint {t_name}:{s_name}: teacher tensor {list(t_shape[1:])} and student "
                f"tensor {list(s_shape[1:])} (per sample) differ beyond the channel axis",
                hint="pair tensors of the same spatial size ([C] or [C, H, W] per sample)")
        if loss == "attention" and len(s_shape) != 4:
            raise DistillError(f"hint {t_name}:{s_name}: attention transfer needs [C, H, W] "
                               f"tensors, got {list(s_shape[1:])}",
                               hint="use --hint-loss mse or cosine for [C] tensors")
        shapes.append(HintShape(s_shape, t_shape, loss))
    return shapes


def standardize(teacher: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None = None
                ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The teacher tensor standardized per channel (axis 1), and the ``(mean, std)`` used
    (computed over every other axis when ``stats`` is None; a dead channel keeps std 1)."""
    if stats is None:
        axes = tuple(a for a in range(teacher.ndim) if a != 1)
        mean = teacher.mean(axis=axes, keepdims=True, dtype=np.float64)
        std = teacher.std(axis=axes, keepdims=True, dtype=np.float64)
        stats = (mean.astype(np.float32)[0], np.where(std > 1e-6, std, 1.0).astype(
            np.float32)[0])
    mean, std = stats
    return ((teacher - mean) / std).astype(np.float32), stats


def initial_adapter(shape: HintShape, rng: np.random.Generator) -> np.ndarray:
    """He-initialized adapter weights."""
    fan_in = shape.student[1]
    return (rng.standard_normal(shape.adapter) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def apply_adapter(student: relax.Expr, adapter: relax.Expr | None) -> relax.Expr:
    """The student tensor with its channels mapped onto the teacher's."""
    if adapter is None:
        return student
    if len(adapter.ty.shape) == 2:
        return R.matmul(student, R.permute_dims(adapter))
    return R.nn.conv2d(student, adapter)


@HINT_LOSSES.register("mse")
def _mse(student: relax.Expr, teacher: relax.Expr) -> relax.Expr:
    """Mean squared difference per sample."""
    axes = list(range(1, len(student.ty.shape)))
    difference = R.subtract(student, teacher)
    return R.mean(R.multiply(difference, difference), axis=axes)


HINT_LOSSES.add("standardized", _mse)  # the teacher side is standardized before training


@HINT_LOSSES.register("attention")
def _attention(student: relax.Expr, teacher: relax.Expr) -> relax.Expr:
    """Squared distance of the unit-length spatial attention maps, per sample."""
    maps = []
    for tensor in (student, teacher):
        batch, _, height, width = (int(d) for d in tensor.ty.shape)
        energy = R.reshape(R.mean(R.multiply(tensor, tensor), axis=[1]), (batch, height * width))
        norm = R.sqrt(R.add(R.sum(R.multiply(energy, energy), axis=[1], keepdims=True),
                            relax.const(_EPSILON, "float32")))
        maps.append(R.divide(energy, norm))
    difference = R.subtract(maps[0], maps[1])
    return R.sum(R.multiply(difference, difference), axis=[1])


@HINT_LOSSES.register("cosine")
def _cosine(student: relax.Expr, teacher: relax.Expr) -> relax.Expr:
    """1 − cosine similarity of the flattened tensors, per sample."""
    axes = list(range(1, len(student.ty.shape)))
    eps = relax.const(_EPSILON, "float32")
    dot = R.sum(R.multiply(student, teacher), axis=axes)
    norms = R.multiply(R.sqrt(R.add(R.sum(R.multiply(student, student), axis=axes), eps)),
                       R.sqrt(R.add(R.sum(R.multiply(teacher, teacher), axis=axes), eps)))
    return R.subtract(relax.const(1.0, "float32"), R.divide(dot, norms))


def hint_reference(student: np.ndarray, teacher: np.ndarray, adapter: np.ndarray | None,
                   loss: str) -> np.ndarray:
    """Per-sample hint distance in float64 (the numpy twin of the Relax terms)."""
    student, teacher = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
    if adapter is not None:
        matrix = adapter.reshape(adapter.shape[:2]).astype(np.float64)
        student = np.einsum("ts,bs...->bt...", matrix, student)
    if loss == "attention":
        maps = []
        for tensor in (student, teacher):
            energy = (tensor**2).mean(axis=1).reshape(len(tensor), -1)
            maps.append(energy / np.sqrt((energy**2).sum(axis=1, keepdims=True) + _EPSILON))
        return ((maps[0] - maps[1]) ** 2).sum(axis=1)
    flat_s, flat_t = student.reshape(len(student), -1), teacher.reshape(len(teacher), -1)
    if loss in ("mse", "standardized"):
        return ((flat_s - flat_t) ** 2).mean(axis=1)
    dot = (flat_s * flat_t).sum(axis=1)
    norms = np.sqrt((flat_s**2).sum(axis=1) + _EPSILON) * np.sqrt((flat_t**2).sum(axis=1)
                                                                  + _EPSILON)
    return 1.0 - dot / norms
