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

import sys
import warnings

import numpy as np
import tvm
from tqdm import tqdm

from relaycomp.runtime.agreement import Agreement, HostModule, compare_outputs


class Evaluator:
    """Runs the switchable module on held-out batches under any layer mask."""

    def __init__(self, mod: tvm.IRModule, batches: list[dict[str, np.ndarray]],
                 input_names: list[str], layer_count: int, labels: np.ndarray | None,
                 progress: tqdm | None = None):
        self._module = HostModule(mod)
        if progress is not None:  # one step for the compile, one per batch of the reference
            progress.update(1)
        self._feeds = [[batch[name] for name in input_names] for batch in batches]
        self.layer_count = layer_count
        self.labels = labels
        self.reference = self._outputs(np.zeros(layer_count, bool), progress)

    def _outputs(self, mask: np.ndarray, progress: tqdm | None = None) -> np.ndarray:
        mask = mask if mask.size else np.zeros(1, bool)
        outputs = []
        for feed in self._feeds:
            # atleast_1d: a scalar (0-d) first output is one value per batch
            outputs.append(np.atleast_1d(self._module.run([*feed, mask])[0]))
            if progress is not None:
                progress.update(1)
        return np.concatenate(outputs)

    def agreement(self, quantized: set[int], progress: tqdm | None = None) -> Agreement:
        """Quantized-vs-float metrics with exactly the layers in ``quantized`` quantized
        (``progress`` counts each batch)."""
        mask = np.zeros(self.layer_count, bool)
        mask[list(quantized)] = True
        return compare_outputs(self.reference, self._outputs(mask, progress), self.labels)


def guard(evaluator: Evaluator, quantized: set[int], budget: float | None,
          progress: tqdm | None = None) -> tuple[set[int], dict[int, dict], list[int], Agreement]:
    """Leave-one-out sensitivity of every quantized layer and, with a ``budget`` (allowed
    accuracy drop), fall back to float for the most sensitive layers until it is met.

    Returns the layers still quantized, per-layer sensitivity, the layers returned to float
    (in order) and the final metrics. Returning layers to float is not what the user asked
    for (int8), so it warns, once, with how many layers and why. ``progress`` counts the
    batches of the first evaluation (all layers int8); the sensitivity analysis has its own bar.
    """
    current = evaluator.agreement(quantized, progress)
    sensitivity: dict[int, dict] = {}
    fallback: list[int] = []
    if budget is None or current.drop() <= budget:
        return quantized, sensitivity, fallback, current
    # One evaluation per layer (minutes on a large model): a bar on an interactive stderr.
    for layer in tqdm(sorted(quantized), desc="int8 sensitivity", unit="layer", file=sys.stderr,
                      disable=None, leave=False, dynamic_ncols=True):
        without = evaluator.agreement(quantized - {layer})
        sensitivity[layer] = {"drop_recovered": current.drop() - without.drop(),
                              "cosine_recovered": without.cosine - current.cosine}
    # Most sensitive first: the accuracy it recovers, then how much closer the outputs get.
    order = sorted(sensitivity, key=lambda i: (sensitivity[i]["drop_recovered"],
                                               sensitivity[i]["cosine_recovered"]), reverse=True)
    remaining = set(quantized)
    all_int8 = current
    for layer in order:
        if current.drop() <= budget:
            break
        remaining.discard(layer)
        fallback.append(layer)
        current = evaluator.agreement(remaining)
    if fallback:
        warnings.warn(fallback_message(len(fallback), len(quantized), budget, all_int8, current),
                      stacklevel=3)
    return remaining, sensitivity, fallback, current


def fallback_message(returned: int, quantized: int, budget: float, before: Agreement,
                     after: Agreement) -> str:
    """The guard's warning: how many layers went back to float, and why."""
    measure = "accuracy" if before.float_accuracy is not None else (
        "top-1 agreement with float" if before.top1_agreement is not None else "cosine")
    kept = quantized - returned
    return (f"the accuracy guard returned {returned} of {quantized} int8 layers to float "
            f"({kept} stay int8): with all of them int8 the {measure} dropped by "
            f"{before.drop():.3g}, more than --max-accuracy-drop {budget:g}; now "
            f"{after.drop():.3g}" + ("" if after.drop() <= budget else ", still over it")
            + " (the report lists the layers; --keep-float or another --calib-method may "
              "do better)")
