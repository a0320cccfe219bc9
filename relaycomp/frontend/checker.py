"""The ONNX checker, as lenient as onnxruntime.

``onnx.checker`` refuses some models onnxruntime loads and runs: an IR-version-3 model whose
initializers are not also graph inputs, graph outputs declared without a shape. Such a finding is
a note, not an error; :func:`check_leniently` repairs a *copy* of the model just enough for the
checker to look further (so a real structural error later in the model is still found), and
raises :class:`OnnxImportError` for every finding onnxruntime would refuse too.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import onnx

from relaycomp.errors import OnnxImportError

# Each finding the checker reports one at a time; a model has at most a few kinds.
MAX_ROUNDS = 16


def _initializers_as_inputs(model: onnx.ModelProto) -> bool:
    # IR < 4 wanted every initializer listed as a graph input; onnxruntime never did.
    if model.ir_version >= 4:
        return False
    model.ir_version = 4
    return True


def _declare_shapes(model: onnx.ModelProto) -> bool:
    # An output/value_info without a shape means "unknown shape" to onnxruntime; the checker
    # wants the field present. The importer infers every shape itself.
    changed = False
    graph = model.graph
    for value in list(graph.output) + list(graph.value_info) + list(graph.input):
        if value.type.HasField("tensor_type") and not value.type.tensor_type.HasField("shape"):
            value.type.tensor_type.shape.SetInParent()
            changed = True
    return changed


# (pattern of the checker's message, note for the report, repair of the checker's copy)
TOLERATED: list[tuple[re.Pattern, str, Callable[[onnx.ModelProto], bool]]] = [
    (re.compile(r"in initializer but not in graph input"),
     ("initializers are not listed as graph inputs, as IR version {ir} required "
      "(onnxruntime accepts this)"), _initializers_as_inputs),
    (re.compile(r"Field 'shape' of 'type' is required but missing"),
     "a graph input/output or value_info has no shape (treated as unknown, as onnxruntime does)",
     _declare_shapes),
]


def check_leniently(model: onnx.ModelProto | str, where: str) -> list[str]:
    """Run the ONNX checker on ``model`` (a ModelProto, or the path of one too large to pass
    in memory); returns notes on findings onnxruntime tolerates, raises
    :class:`OnnxImportError` naming ``where`` for any other finding."""
    notes: list[str] = []
    copy = None
    for _ in range(MAX_ROUNDS):
        try:
            onnx.checker.check_model(copy if copy is not None else model)
            return notes
        except onnx.checker.ValidationError as err:
            message = _first_line(err)
        if copy is None:
            copy = onnx.load(model) if isinstance(model, str) else onnx.ModelProto()
            if not isinstance(model, str):
                copy.CopyFrom(model)
        for pattern, note, repair in TOLERATED:
            if pattern.search(message):
                ir_version = copy.ir_version
                if repair(copy):
                    notes.append("onnx checker: " + note.format(ir=ir_version))
                    break
        else:
            raise OnnxImportError(f"{where} is not a valid ONNX model: {message}")
    raise OnnxImportError(f"{where} is not a valid ONNX model: {message}")


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
