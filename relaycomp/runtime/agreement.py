"""Running a Relax module on this machine and comparing its outputs with a reference: what the
int8 guard and the bf16 accuracy check measure with.

:class:`HostModule` compiles the module with relaycomp's own pipeline for the *host* (also when
the artifact targets ARM or CUDA: the same arithmetic) from the ``quantize`` stage on, so
quantized and bf16 layers run on the kernels the build uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from relaycomp import ir
from relaycomp.compiler.pipeline import (
    Placement,
    default_stages,
    run_stages,
    split_before,
    with_passes,
)

# The module we are given has been through the stages before this one. From here on the build's
# pipeline runs: the guard measures the integer kernels (QDQ conv/matmul lowered as in the
# build), not a float QDQ graph.
QUANTIZE_STAGE = "quantize"


class HostModule:
    """A Relax module compiled for this machine: ``run(arrays) -> [outputs]``; ``placements``
    add passes to the pipeline (``convert_to_bf16``: the bf16 build as compiled)."""

    def __init__(self, mod: tvm.IRModule, placements: Sequence[Placement] = ()):
        from relaycomp.targets import resolve

        spec = resolve("host")
        target = spec.tvm_target()
        stages = with_passes(split_before(default_stages(spec.kind), QUANTIZE_STAGE)[1],
                             placements)
        lowered, _ = run_stages(mod, stages, target)
        self._device = tvm.cpu(0)
        self._vm = relax.VirtualMachine(ir.build_executable(lowered, target), self._device)

    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Outputs of ``main`` for positional ``arrays``, flattened."""
        # np.require keeps a 0-d (scalar) input 0-d; np.ascontiguousarray would make it [1]
        tensors = [ir.to_device(np.require(a, requirements="C"), self._device) for a in arrays]
        return ir.to_numpy(self._vm["main"](*tensors))


@dataclass(frozen=True)
class Agreement:
    """How closely quantized outputs follow the float ones (first output, all samples)."""

    top1_agreement: float | None
    cosine: float
    max_abs_error: float
    float_accuracy: float | None
    quant_accuracy: float | None

    def drop(self) -> float:
        """The accuracy lost: label accuracy when labels exist, else 1 - top-1 agreement
        (or 1 - cosine for outputs without classes)."""
        if self.float_accuracy is not None:
            return self.float_accuracy - self.quant_accuracy
        if self.top1_agreement is not None:
            return 1.0 - self.top1_agreement
        return 1.0 - self.cosine

    def to_json(self) -> dict:
        """JSON form for reports."""
        return {"top1_agreement": self.top1_agreement, "cosine": self.cosine,
                "max_abs_error": self.max_abs_error, "float_accuracy": self.float_accuracy,
                "quant_accuracy": self.quant_accuracy}


def compare_outputs(reference: np.ndarray, actual: np.ndarray,
                    labels: np.ndarray | None = None) -> Agreement:
    """Top-1 agreement (classes on the last axis), cosine similarity, max error, accuracies."""
    ref = reference.reshape(-1, reference.shape[-1]) if reference.ndim > 1 else reference[None]
    act = actual.reshape(ref.shape)
    classes = ref.shape[-1] > 1
    top1 = float(np.mean(ref.argmax(-1) == act.argmax(-1))) if classes else None
    flat_ref, flat_act = ref.reshape(-1).astype(np.float64), act.reshape(-1).astype(np.float64)
    norm = np.linalg.norm(flat_ref) * np.linalg.norm(flat_act)
    cosine = float(flat_ref @ flat_act / norm) if norm > 0 else float(
        np.array_equal(flat_ref, flat_act))
    float_acc = quant_acc = None
    if labels is not None and classes and labels.size == ref.shape[0]:
        float_acc = float(np.mean(ref.argmax(-1) == labels))
        quant_acc = float(np.mean(act.argmax(-1) == labels))
    return Agreement(top1, cosine, float(np.max(np.abs(flat_ref - flat_act))), float_acc,
                     quant_acc)
