"""Run an ONNX model with a reference runtime, to check a compiled artifact against it.

onnxruntime is used when installed (it is the project's numerical reference); otherwise ONNX's
own pure-Python ``ReferenceEvaluator``, which needs nothing beyond the ``onnx`` package.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from relaycomp.errors import RelaycompError, last_line


def run_reference(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray],
                  ) -> tuple[dict[str, np.ndarray], str]:
    """Outputs keyed by name, and the name of the runtime that produced them."""
    names = [o.name for o in model.graph.output]
    try:
        import onnxruntime
    except ImportError:
        onnxruntime = None
    if _has_bfloat16(model, inputs):
        onnxruntime = None  # its Python API neither takes nor returns numpy bfloat16 arrays
    try:
        if onnxruntime is not None:
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3
            session = onnxruntime.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            return dict(zip(names, session.run(names, dict(inputs)))), "onnxruntime"
        from onnx.reference import ReferenceEvaluator

        outputs = ReferenceEvaluator(model).run(names, dict(inputs))
        return dict(zip(names, outputs)), "onnx.reference"
    except Exception as err:
        raise RelaycompError(f"the reference runtime could not run the model: {last_line(err)}",
                             ) from err


def _has_bfloat16(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> bool:
    outputs = [o.type.tensor_type.elem_type for o in model.graph.output]
    return onnx.TensorProto.BFLOAT16 in outputs or any(
        np.asarray(a).dtype.name == "bfloat16" for a in inputs.values())


def compare(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
            ) -> dict[str, dict[str, float]]:
    """Per output: max absolute error and max error relative to the reference's largest finite
    value, over the elements both runtimes give finite values; and ``nonfinite_mismatches``, the
    elements where one side is NaN or ±Inf and the other is not the same (NaN matches NaN, +Inf
    matches +Inf). Any such mismatch makes both errors ``inf``, so no tolerance accepts it."""
    errors = {}
    for name, want in expected.items():
        got = np.asarray(actual[name])
        want = np.asarray(want)
        if got.dtype == np.bool_ or want.dtype == np.bool_:
            got, want = got.astype(np.int64), want.astype(np.int64)
        got, want = got.astype(np.float64), want.astype(np.float64)
        finite = np.isfinite(got) & np.isfinite(want)
        same_special = (np.isnan(got) & np.isnan(want)) | (~finite & (got == want))
        mismatches = int(np.count_nonzero(~finite & ~same_special))
        diff = np.abs(got[finite] - want[finite])
        scale = max(float(np.abs(want[np.isfinite(want)]).max(initial=0.0)), 1e-12)
        max_abs = float(diff.max(initial=0.0))
        max_rel = max_abs / scale
        if mismatches:
            max_abs = max_rel = float("inf")
        errors[name] = {"max_abs": max_abs, "max_rel": max_rel,
                        "nonfinite_mismatches": mismatches}
    return errors
