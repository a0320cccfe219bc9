"""Running Relax modules on this machine for calibration, and the accuracy guard.

Calibration and the guard really run the model: an instrumented or switchable copy of the module
is compiled with relaycomp's own pipeline for the *host* (also when the artifact targets ARM or
CUDA: the same integers) and executed batch by batch; its QDQ layers run on the integer kernels
of ``lower_qdq_to_integer``, as in the artifact. The switchable copy
(:func:`relaycomp.passes.quantize_int8.
switchable`) takes a per-layer mask, so one compile measures the float model, the quantized one
and every leave-one-layer-in-float variant the sensitivity analysis needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from relaycomp import ir
from relaycomp.compiler.pipeline import default_stages, run_stages, split_before

# The module we are given has been through the stages before this one. From here on the build's
# pipeline runs: the guard measures the integer kernels (QDQ conv/matmul lowered as in the
# build), not a float QDQ graph.
QUANTIZE_STAGE = "quantize"


class HostModule:
    """A Relax module compiled for this machine: ``run(arrays) -> [outputs]``."""

    def __init__(self, mod: tvm.IRModule):
        from relaycomp.targets import resolve

        spec = resolve("host")
        target = spec.tvm_target()
        stages = split_before(default_stages(spec.kind), QUANTIZE_STAGE)[1]
        lowered, _ = run_stages(mod, stages, target)
        self._device = tvm.cpu(0)
        self._vm = relax.VirtualMachine(ir.build_executable(lowered, target), self._device)

    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Outputs of ``main`` for positional ``arrays``, flattened."""
        tensors = [ir.to_device(np.ascontiguousarray(a), self._device) for a in arrays]
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


class Evaluator:
    """Runs the switchable module on held-out batches under any layer mask."""

    def __init__(self, mod: tvm.IRModule, batches: list[dict[str, np.ndarray]],
                 input_names: list[str], layer_count: int, labels: np.ndarray | None):
        self._module = HostModule(mod)
        self._feeds = [[batch[name] for name in input_names] for batch in batches]
        self.layer_count = layer_count
        self.labels = labels
        self.reference = self._outputs(np.zeros(layer_count, bool))

    def _outputs(self, mask: np.ndarray) -> np.ndarray:
        mask = mask if mask.size else np.zeros(1, bool)
        return np.concatenate([self._module.run([*feed, mask])[0] for feed in self._feeds])

    def agreement(self, quantized: set[int]) -> Agreement:
        """Quantized-vs-float metrics with exactly the layers in ``quantized`` quantized."""
        mask = np.zeros(self.layer_count, bool)
        mask[list(quantized)] = True
        return compare_outputs(self.reference, self._outputs(mask), self.labels)


def guard(evaluator: Evaluator, quantized: set[int], budget: float | None,
          ) -> tuple[set[int], dict[int, dict], list[int], Agreement]:
    """Leave-one-out sensitivity of every quantized layer and, with a ``budget`` (allowed
    accuracy drop), fall back to float for the most sensitive layers until it is met.

    Returns the layers still quantized, per-layer sensitivity, the layers returned to float
    (in order) and the final metrics.
    """
    current = evaluator.agreement(quantized)
    sensitivity: dict[int, dict] = {}
    fallback: list[int] = []
    if budget is None or current.drop() <= budget:
        return quantized, sensitivity, fallback, current
    for layer in sorted(quantized):
        without = evaluator.agreement(quantized - {layer})
        sensitivity[layer] = {"drop_recovered": current.drop() - without.drop(),
                              "cosine_recovered": without.cosine - current.cosine}
    # Most sensitive first: the accuracy it recovers, then how much closer the outputs get.
    order = sorted(sensitivity, key=lambda i: (sensitivity[i]["drop_recovered"],
                                               sensitivity[i]["cosine_recovered"]), reverse=True)
    remaining = set(quantized)
    for layer in order:
        if current.drop() <= budget:
            break
        remaining.discard(layer)
        fallback.append(layer)
        current = evaluator.agreement(remaining)
    return remaining, sensitivity, fallback, current
