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
