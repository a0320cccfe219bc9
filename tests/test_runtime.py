"""Loading and running artifacts: input checks and refusing foreign builds."""

import shutil

import numpy as np
import pytest
from models import conv_net, random_inputs

import relaycomp
from relaycomp.errors import ArtifactError, InputSpecError


@pytest.fixture(scope="module")
def conv_artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("artifact") / "conv.so"
    return relaycomp.compile(conv_net(), path).path


def test_missing_input_is_named(conv_artifact):
    with pytest.raises(InputSpecError, match="missing input"):
        relaycomp.load(conv_artifact).run({})


def test_unknown_input_is_named(conv_artifact):
    inputs = random_inputs(conv_net())
    inputs["bogus"] = np.zeros(1, np.float32)
    with pytest.raises(InputSpecError, match="bogus"):
        relaycomp.load(conv_artifact).run(inputs)


def test_wrong_shape_says_what_was_compiled(conv_artifact):
    with pytest.raises(InputSpecError, match=r"compiled for \[1, 3, 32, 32\]"):
        relaycomp.load(conv_artifact).run({"x": np.zeros((2, 3, 32, 32), np.float32)})


def test_wrong_dtype_is_refused(conv_artifact):
    with pytest.raises(InputSpecError, match="float64"):
        relaycomp.load(conv_artifact).run({"x": np.zeros((1, 3, 32, 32))})


def test_artifact_without_manifest_is_refused(conv_artifact, tmp_path):
    lonely = tmp_path / "lonely.so"
    shutil.copy(conv_artifact, lonely)
    with pytest.raises(ArtifactError, match="no manifest"):
        relaycomp.load(lonely)


def test_arm_artifact_is_refused_on_this_machine(tmp_path):
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc not installed")
    artifact = relaycomp.compile(conv_net(), tmp_path / "arm.so", target="aarch64-linux-gnu")
    with pytest.raises(ArtifactError, match="built for aarch64"):
        relaycomp.load(artifact.path)


def test_repeated_runs_give_identical_outputs(conv_artifact):
    model = relaycomp.load(conv_artifact)
    inputs = random_inputs(conv_net())
    first, second = model.run(inputs), model.run(inputs)
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_rebuilding_at_the_same_path_runs_the_new_library(tmp_path):
    from models import mlp

    path = tmp_path / "same.so"
    relaycomp.compile(conv_net(), path)
    first = relaycomp.load(path).run(random_inputs(conv_net()))
    relaycomp.compile(mlp(), path)
    second = relaycomp.load(path).run(random_inputs(mlp()))
    assert list(first) == ["logits"] and list(second) == ["probs"]
    assert second["probs"].shape == (4, 10)


def _misaligned(array: np.ndarray) -> np.ndarray:
    """A copy of ``array`` whose data starts 4 bytes past a 64-byte boundary."""
    from relaycomp.runtime.staging import aligned_empty

    raw = aligned_empty((array.nbytes + 64,), np.uint8)
    copy = raw[4:4 + array.nbytes].view(array.dtype).reshape(array.shape)
    copy[...] = array
    return copy


def test_aligned_misaligned_and_strided_inputs_give_the_same_outputs(conv_artifact):
    from relaycomp.runtime.staging import aligned_empty

    model = relaycomp.load(conv_artifact)
    [(name, x)] = random_inputs(conv_net()).items()
    expected = model.run({name: x.copy()})
    strided = np.repeat(x, 2, axis=-1)[..., ::2]  # x again, not C-contiguous
    aligned = aligned_empty(x.shape, x.dtype)
    aligned[...] = x
    # numpy calls this C-contiguous (the odd stride is on the one-element batch axis); TVM not
    odd_batch_stride = np.lib.stride_tricks.as_strided(aligned, strides=(8, *x.strides[1:]))
    assert odd_batch_stride.flags.c_contiguous and x.shape[0] == 1
    for variant in (_misaligned(x), strided, _misaligned(x[::-1].copy())[::-1], aligned,
                    odd_batch_stride):
        before = variant.copy()
        actual = model.run({name: variant})
        assert all(np.array_equal(actual[k], expected[k]) for k in expected)
        np.testing.assert_array_equal(variant, before)  # the caller's array is left alone


def test_an_aligned_input_is_passed_without_a_copy_and_others_through_one_buffer():
    from relaycomp.runtime.staging import ALIGNMENT, InputStaging, aligned_empty

    staging = InputStaging()
    aligned = aligned_empty((3, 40), np.float32)
    aligned[...] = 1.5
    assert aligned.ctypes.data % ALIGNMENT == 0
    assert np.shares_memory(np.from_dlpack(staging.tensor(0, aligned)), aligned)
    shifted = _misaligned(aligned)
    first = np.from_dlpack(staging.tensor(0, shifted))
    second = np.from_dlpack(staging.tensor(0, _misaligned(shifted + 1)))
    assert not np.shares_memory(first, shifted)
    assert np.shares_memory(first, second)  # one staging buffer, reused
    assert (second == 2.5).all()


def test_an_output_that_views_its_input_is_not_overwritten_by_the_next_call(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "view",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [3, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    loaded = relaycomp.load(relaycomp.compile(model, tmp_path / "view.so").path)
    x = _misaligned(np.arange(12, dtype=np.float32).reshape(2, 6))  # through the staging buffer
    first = loaded.run({"x": x})["y"]
    loaded.run({"x": x + 100})
    np.testing.assert_array_equal(first, np.arange(12, dtype=np.float32).reshape(3, 4))
