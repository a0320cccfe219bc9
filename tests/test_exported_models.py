"""Real PyTorch exports (tests/fixtures, made by make_fixtures.py) compile and match.

Each fixture ships a sample input and PyTorch's own output; relaycomp must match onnxruntime
within 1e-3 relative error and PyTorch within the same bound.
"""

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import assert_matches_ort

from relaycomp.runtime.reference import compare

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.onnx"))


def load_fixture(name: str) -> tuple[onnx.ModelProto, dict, dict]:
    model = onnx.load(str(FIXTURES / f"{name}.onnx"))
    with np.load(FIXTURES / f"{name}.npz") as data:
        expected = {k.removeprefix("expected__"): data[k] for k in data.files
                    if k.startswith("expected__")}
        inputs = {k: data[k] for k in data.files if not k.startswith("expected__")}
    return model, inputs, expected


def test_fixtures_are_present():
    assert len(NAMES) >= 3


@pytest.mark.parametrize("name", NAMES)
def test_pytorch_export_matches_onnxruntime_and_pytorch(name, tmp_path):
    model, inputs, expected = load_fixture(name)
    actual = assert_matches_ort(model, inputs, tmp_path)
    worst = {k: e["max_rel"] for k, e in compare(actual, expected).items() if e["max_rel"] > 1e-3}
    assert not worst, f"differs from PyTorch: {worst}"
