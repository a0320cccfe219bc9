"""relaycomp: a compiler-style graph optimizer on Apache TVM.

    import relaycomp
    artifact = relaycomp.compile("model.onnx", "model.so", inputs={"x": (1, 3, 224, 224)},
                                 quantize=relaycomp.QuantConfig(), calibration="samples.npz",
                                 prune=0.3)
    outputs = relaycomp.load("model.so").run({"x": x})   # a build for this machine
"""

from __future__ import annotations

__version__ = "0.1.0"

from relaycomp import passes as _passes  # noqa: F401 - registers the built-in passes
from relaycomp.compiler.build import Artifact, CompileConfig, compile_model
from relaycomp.distill import DistillConfig, DistillReport, distill
from relaycomp.distill import feature as _distill_feature  # noqa: F401 - registers it
from relaycomp.errors import RelaycompError
from relaycomp.frontend import (
    ImportedModel,
    ModelInfo,
    TensorSpec,
    import_onnx,
    load_onnx,
    model_info,
)
from relaycomp.precision import PrecisionConfig
from relaycomp.precision import feature as _precision_feature  # noqa: F401 - registers it
from relaycomp.prune import PruneConfig, PruneReport, prune
from relaycomp.prune import feature as _prune_feature  # noqa: F401 - registers the feature
from relaycomp.quantize import QuantConfig, QuantReport, quantize
from relaycomp.quantize import feature as _quantize_feature  # noqa: F401 - registers it
from relaycomp.registry import register_pass
from relaycomp.runtime import LoadedModel, load
from relaycomp.tune import TuneConfig, TuneReport, tune
from relaycomp.tune import feature as _tune_feature  # noqa: F401 - registers it


def compile(model, output, *, target: str = "host", inputs=None, mcpu=None, arch=None,
            num_cores=None, quantize: QuantConfig | None = None,
            prune: PruneConfig | float | None = None, tune: TuneConfig | None = None,
            precision: PrecisionConfig | str | None = None, calibration=None,
            evaluation=None) -> Artifact:
    """Compile ``model`` (path, ``example:NAME`` or ModelProto) into ``output`` (.so or .tar).

    ``inputs`` maps input names to shapes, pinning dynamic dims (others default to 1).
    ``quantize``, ``prune`` (a config, or the fraction of channels to remove), ``tune`` and
    ``precision`` (``"bf16"`` or a config; ``"fp32"`` is the default) turn those features on;
    ``calibration``/``evaluation`` are the data they use.
    """
    if isinstance(prune, (int, float)) and not isinstance(prune, bool):
        prune = PruneConfig(ratio=float(prune))
    if isinstance(precision, str):
        precision = None if precision == "fp32" else PrecisionConfig(dtype=precision)
    features = tuple(f for f in (quantize, prune, precision, tune) if f is not None)
    config = CompileConfig(target=target, input_shapes=dict(inputs or {}), mcpu=mcpu, arch=arch,
                           num_cores=num_cores, features=features, calibration=calibration,
                           evaluation=evaluation)
    return compile_model(model, output, config)


__all__ = ["Artifact", "CompileConfig", "DistillConfig", "DistillReport", "ImportedModel",
           "LoadedModel", "ModelInfo", "PrecisionConfig", "PruneConfig", "PruneReport",
           "QuantConfig", "QuantReport", "RelaycompError", "TensorSpec", "TuneConfig",
           "TuneReport", "compile", "compile_model", "distill", "import_onnx", "load", "load_onnx", "model_info", "prune",
           "quantize", "register_pass", "tune"]
