"""``relaycomp quantize MODEL --calib DATA -o MODEL.int8.onnx``: the int8 plan a compile makes,
written as a QDQ ONNX model that onnxruntime runs, with the compiled int8 artifact's numbers."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
from helpers import run_cli
from models import mlp

from relaycomp.compiler.build import CompileConfig, compile_model
from relaycomp.frontend.examples import resolve_model_path
from relaycomp.quantize.export import quantize_to_qdq
from relaycomp.quantize.quantizer import QuantConfig
from relaycomp.runtime.local import load

ort = pytest.importorskip("onnxruntime")


def _session(model: onnx.ModelProto):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_the_digits_qdq_model_runs_in_onnxruntime_like_the_int8_artifact(tmp_path):
    """BatchNorm folded into the convs as the compiler does; onnxruntime's integer kernels on
    the exported model and ours on the artifact give the same classes and nearby logits."""
    config = QuantConfig(calibration="entropy")
    qdq, report, skipped = quantize_to_qdq("example:digits", config, calib="example:digits")
    assert skipped == {}
    ops = Counter(node.op_type for node in qdq.graph.node)
    assert ops["QuantizeLinear"] == 4 and ops["DequantizeLinear"] == 8
    assert "BatchNormalization" not in ops
    weights = [t for t in qdq.graph.initializer if t.name.endswith("_weight_quantized")]
    assert len(weights) == 4 and all(t.data_type == onnx.TensorProto.INT8 for t in weights)
    artifact = compile_model("example:digits", tmp_path / "d.so", CompileConfig(
        features=(config,), calibration="example:digits"))
    # the same plan: the artifact's report and the exported one agree layer by layer
    assert [layer["input_scale"] for layer in artifact.manifest.report["quantize"]["layers"]] \
        == [layer["input_scale"] for layer in report.to_json()["layers"]]
    samples = np.load(resolve_model_path("example:digits").parent / "digits_samples.npz")
    session, model = _session(qdq), load(artifact.path)
    theirs = np.concatenate([session.run(None, {"input": x[None]})[0]
                             for x in samples["input"]])
    ours = np.concatenate([model.run({"input": x[None]})["logits"] for x in samples["input"]])
    assert (theirs.argmax(1) == ours.argmax(1)).mean() >= 63 / 64
    assert np.abs(theirs - ours).max() <= 0.02 * np.abs(ours).max()


def test_cli_writes_the_model_and_reports_it(tmp_path):
    onnx.save(mlp(), tmp_path / "mlp.onnx")
    x = np.random.default_rng(0).standard_normal((8, 4, 64)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    result = run_cli("quantize", tmp_path / "mlp.onnx", "--calib", tmp_path / "calib.npz",
                     "-o", tmp_path / "mlp.int8.onnx", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["model"] == str(tmp_path / "mlp.int8.onnx")
    int8 = [layer for layer in document["report"]["layers"] if layer["mode"] == "int8"]
    qdq = onnx.load(tmp_path / "mlp.int8.onnx")
    assert Counter(n.op_type for n in qdq.graph.node)["QuantizeLinear"] == len(int8) > 0
    float_out = _session(mlp()).run(None, {"x": x[0]})[0]
    int8_out = _session(qdq).run(None, {"x": x[0]})[0]
    cosine = float((float_out * int8_out).sum() /
                   (np.linalg.norm(float_out) * np.linalg.norm(int8_out)))
    assert cosine > 0.99
    result = run_cli("quantize", tmp_path / "mlp.onnx", "--calib", tmp_path / "calib.npz",
                     "-o", tmp_path / "no" / "m.onnx")
    assert result.returncode == 1 and result.stderr.startswith("relaycomp: error: cannot write")
