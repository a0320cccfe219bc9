"""Shared test helpers: numerics against onnxruntime, op counts, running the CLI."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import onnx
import onnxruntime

import relaycomp
from relaycomp.reference import compare


def ort_outputs(model: onnx.ModelProto, inputs: dict) -> dict[str, np.ndarray]:
    """onnxruntime's outputs, keyed by output name."""
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    return dict(zip(names, session.run(names, inputs)))


def assert_matches_ort(model: onnx.ModelProto, inputs: dict, tmp_path, *, target: str = "host",
                       rtol: float = 1e-3) -> dict[str, np.ndarray]:
    """Compile ``model`` for the shapes of ``inputs``, run it, and compare with onnxruntime.

    The error of each output, relative to the reference's largest magnitude, must be ≤ ``rtol``;
    output names and shapes must match exactly. Returns relaycomp's outputs.
    """
    shapes = {name: array.shape for name, array in inputs.items()}
    artifact = relaycomp.compile(model, tmp_path / "model.so", target=target, inputs=shapes)
    actual = relaycomp.load(artifact.path).run(inputs)
    expected = ort_outputs(model, inputs)
    assert list(actual) == list(expected), "output names differ from the ONNX graph's"
    for name in expected:
        assert actual[name].shape == expected[name].shape, f"{name}: shape differs"
    errors = compare(actual, expected)
    worst = {name: e["max_rel"] for name, e in errors.items() if e["max_rel"] > rtol}
    assert not worst, f"relative error above {rtol}: {worst}"
    return actual


def op_counts(model: onnx.ModelProto) -> Counter:
    """ONNX op type → number of nodes."""
    return Counter(node.op_type for node in model.graph.node)


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """Run ``relaycomp ARGS`` in a fresh interpreter, as a user would; captures text output."""
    return subprocess.run([sys.executable, "-m", "relaycomp.cli", *map(str, args)],
                          check=False, capture_output=True, text=True, cwd=cwd, timeout=600)
