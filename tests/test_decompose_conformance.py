"""ONNX's own operator test cases for the decomposed ops, compiled and run by relaycomp.

``onnx.backend.test.case.node.collect_testcases`` builds the cases in memory with reference
inputs and outputs. Every case whose graph (sub-graphs included) holds an op with a registered
decomposition is compiled through ``relaycomp.compile`` and run by the runtime; integer and bool
inputs (and OneHot's depth) become constants, as real exports have their axes, positions, trip
counts and sizes. A fixed
sample runs by default; the whole set is ``slow``. Expected failures are listed with reasons.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import relaycomp
from relaycomp.errors import RelaycompError
from relaycomp.frontend.decompose import is_decomposable

# Reasons are checked: a case listed here must fail (strict xfail), so a fix is noticed.
EXPECTED_FAILURES = {
    **{f"test_affine_grid_{name}_expanded": "Unsqueeze with 0-d axes: TVM's converter wants "
       "a list" for name in ["2d", "2d_align_corners", "3d", "3d_align_corners"]},
    "test_if_seq": "its graph output is a sequence: refused with an error",
    "test_if_opt": "an Optional holding a sequence is refused (sequences resolve through "
                   "the sequence ops only)",
    **{f"test_range_{name}_type_positive_delta_expanded": "a Loop whose trip count comes from "
       "run-time float inputs (start, limit, delta) is refused" for name in
       ["float", "float16", "bfloat16"]},
    "test_split_to_sequence_1": "a sequence graph output is refused",
    "test_split_to_sequence_2": "a sequence graph output is refused",
    "test_split_to_sequence_nokeepdims": "a sequence graph output is refused",
}

# A default sample: one or two per family, the rest in the slow run.
SAMPLE = [
    "test_lstm_with_peepholes", "test_gru_seq_length", "test_simple_rnn_reverse",
    "test_loop11", "test_scan9_sum", "test_attention_4d_gqa_with_past_and_present",
    "test_rotary_embedding_interleaved", "test_cumprod_1d_reverse_exclusive",
]


def _holds_decomposable(graph: onnx.GraphProto) -> bool:
    for node in graph.node:
        if is_decomposable(node):
            return True
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            if any(_holds_decomposable(sub) for sub in subs):
                return True
    return False


@functools.cache
def _cases() -> dict:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators overflow casts on purpose
        cases = collect_testcases(None)
    return {case.name: case for case in cases if _holds_decomposable(case.model.graph)
            and all(v.type.WhichOneof("value") == "tensor_type" for v in case.model.graph.input)}


def run_case(name: str, tmp_path) -> None:
    """Compile and run one case; assert every output matches its reference."""
    case = _cases()[name]
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    inputs, expected = case.data_sets[0]
    feeds = {}
    depths = {node.input[1] for node in model.graph.node if node.op_type == "OneHot"}
    for value, array in zip(list(model.graph.input), inputs):
        array = np.asarray(array)
        # axes, positions, trip counts, conditions; OneHot's depth (a size, float in some cases)
        if array.dtype.kind in "iub" or value.name in depths:
            model.graph.initializer.append(numpy_helper.from_array(array, value.name))
        else:
            feeds[value.name] = array
    kept = [value for value in model.graph.input if value.name in feeds]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    artifact = relaycomp.compile(model, tmp_path / "model.so",
                                 inputs={name: array.shape for name, array in feeds.items()})
    actual = list(relaycomp.load(artifact.path).run(feeds).values())
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        want = np.asarray(want)
        assert got.shape == want.shape
        half = want.dtype in (np.float16,) or "bfloat16" in str(want.dtype)
        tolerance = 1e-2 if half else 1e-4
        got64, want64 = got.astype(np.float64), want.astype(np.float64)
        finite = np.isfinite(want64)
        scale = max(float(np.max(np.abs(want64[finite]))) if finite.any() else 0.0, 1.0)
        # NaN where the reference has NaN, and the same infinities, count as equal
        same = (got64 == want64) | (np.isnan(got64) & np.isnan(want64))
        error = np.where(same, 0.0, np.abs(got64 - want64))
        assert not np.isnan(error).any() and (error.max() if error.size else 0) <= \
            tolerance * scale, f"error {error.max()}"


def _params(names):
    for name in names:
        marks = []
        if name in EXPECTED_FAILURES:
            marks.append(pytest.mark.xfail(raises=(AssertionError, RelaycompError), strict=True,
                                           reason=EXPECTED_FAILURES[name]))
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", _params(SAMPLE))
def test_sample_matches_reference(name, tmp_path):
    run_case(name, tmp_path)


def test_sample_and_expected_failures_name_real_cases():
    known = set(_cases())
    assert set(SAMPLE) <= known
    assert set(EXPECTED_FAILURES) <= known, set(EXPECTED_FAILURES) - known


@pytest.mark.slow
@pytest.mark.parametrize("name", _params(sorted(_cases())))
def test_case_matches_reference(name, tmp_path):
    run_case(name, tmp_path)
