"""relaycomp: a compiler-style graph optimizer on Apache TVM.

    import relaycomp
    artifact = relaycomp.compile("model.onnx", "model.so", target="aarch64-linux-gnu",
                                 inputs={"x": (1, 3, 224, 224)})
    outputs = relaycomp.load("model.so").run({"x": x})   # on the host, for host targets
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import passes as _passes  # noqa: F401 - registers the built-in passes
from .build import Artifact, CompileConfig, compile_model
from .distill import DistillConfig, DistillReport, distill
from .errors import RelaycompError
from .frontend import ImportedModel, TensorSpec, import_onnx, load_onnx
from .model_info import ModelInfo, model_info
from .quantize import QuantConfig, QuantReport, quantize
from .registry import register_pass
from .runtime import LoadedModel, load
from .tune import TuneConfig, TuneReport, tune  # importing it registers its pass


def compile(model, output, *, target: str = "host", inputs=None, mcpu=None, arch=None,
            num_cores=None) -> Artifact:
    """Compile ``model`` (path, ``example:NAME`` or ModelProto) into ``output`` (.so or .tar).

    ``inputs`` maps input names to shapes, pinning dynamic dims (others default to 1).
    """
    config = CompileConfig(target=target, input_shapes=dict(inputs or {}), mcpu=mcpu, arch=arch,
                           num_cores=num_cores)
    return compile_model(model, output, config)


__all__ = ["Artifact", "CompileConfig", "DistillConfig", "DistillReport", "ImportedModel",
           "LoadedModel", "ModelInfo", "QuantConfig", "QuantReport", "RelaycompError",
           "TensorSpec", "TuneConfig", "TuneReport", "compile", "compile_model", "distill",
           "import_onnx", "load", "load_onnx", "model_info", "quantize", "register_pass", "tune"]
