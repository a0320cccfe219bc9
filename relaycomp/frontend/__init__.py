"""ONNX → Relax: load and validate, fold shape sub-graphs, rewrite QOperator into QDQ, model
info, input data."""

from relaycomp.frontend.model_info import ModelInfo, model_info
from relaycomp.frontend.onnx_import import ImportedModel, TensorSpec, import_onnx, load_onnx

__all__ = ["ImportedModel", "ModelInfo", "TensorSpec", "import_onnx", "load_onnx", "model_info"]
