"""Real model-zoo conv nets shipped inside the onnx package (its "light" backend test models).

Their weights are generated in-graph (ConstantOfShape), so the files are small but the graphs are
the real AlexNet, SqueezeNet, Inception, ResNet-50, DenseNet-121, ShuffleNet, VGG-19 and ZFNet.
Compiled outputs must match onnxruntime within 1e-3 relative error. The larger ones are `slow`.
"""

from pathlib import Path

import onnx
import pytest
from helpers import assert_matches_ort

from relaycomp.frontend.onnx_import import graph_inputs, pin_input_shapes
from relaycomp.runtime.local import random_inputs

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
FAST = ["light_bvlc_alexnet", "light_squeezenet"]
SLOW = ["light_inception_v1", "light_inception_v2", "light_resnet50", "light_densenet121",
        "light_shufflenet", "light_vgg19", "light_zfnet512"]


def _check(name: str, tmp_path) -> None:
    path = LIGHT / f"{name}.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is not shipped by this onnx version")
    model = onnx.load(str(path))
    specs, _ = pin_input_shapes(graph_inputs(model), {})
    assert_matches_ort(model, random_inputs(specs), tmp_path)


@pytest.mark.parametrize("name", FAST)
def test_zoo_model_matches_onnxruntime(name, tmp_path):
    _check(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_large_zoo_model_matches_onnxruntime(name, tmp_path):
    _check(name, tmp_path)
