"""Fold an explicit zero ``Pad`` into the padding of the ``Conv`` that consumes it.

An ONNX-graph pass, run by the importer before translation to Relax (the Relax importer emits
``Pad`` as an opaque TIR call that no Relax pattern can see through).
Matches: ``Pad(x)`` in constant mode with value 0 and constant pads on the spatial axes only,
whose single consumer is a 2-D/1-D/3-D ``Conv`` without ``auto_pad``. Produces: the ``Conv`` reading
``x`` directly with the pads added to its own. Keeps: outputs bit-identical, graph inputs and
outputs. Reports: the number of pads folded.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _constant(model: onnx.ModelProto, name: str):
    if not name:
        return None
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    return None


def _spatial_pads(model: onnx.ModelProto, pad: onnx.NodeProto, rank: int) -> list[int] | None:
    """The pads on the spatial axes as ONNX Conv wants them, or None if not foldable."""
    attrs = {a.name: helper.get_attribute_value(a) for a in pad.attribute}
    if attrs.get("mode", b"constant") not in (b"constant", "constant"):
        return None
    pads = attrs.get("pads") if len(pad.input) < 2 else _constant(model, pad.input[1])
    value = attrs.get("value", 0.0) if len(pad.input) < 3 else _constant(model, pad.input[2])
    if pads is None or value is None or (len(pad.input) > 3 and pad.input[3]):
        return None  # dynamic pads or explicit axes: leave it
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    if float(np.asarray(value).reshape(-1)[0] if np.size(value) else 0.0) != 0.0:
        return None
    if len(pads) != 2 * rank or any(pads[i] or pads[rank + i] for i in (0, 1)) or min(pads) < 0:
        return None
    return pads[2:rank] + pads[rank + 2:]


def fold_pad_into_conv(model: onnx.ModelProto) -> int:
    """Rewrite ``model`` in place; returns how many Pad nodes were folded."""
    graph = model.graph
    consumers = Counter(name for node in graph.node for name in node.input)
    outputs = {o.name for o in graph.output}
    producers = {out: node for node in graph.node for out in node.output}
    removed = []
    for conv in graph.node:
        pad = producers.get(conv.input[0]) if conv.op_type == "Conv" else None
        if pad is None or pad.op_type != "Pad" or consumers[pad.output[0]] != 1 \
                or pad.output[0] in outputs:
            continue
        conv_attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        if conv_attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        weight = _constant(model, conv.input[1])
        rank = weight.ndim if weight is not None else None
        extra = _spatial_pads(model, pad, rank) if rank else None
        if extra is None:
            continue
        half = len(extra) // 2
        own = list(conv_attrs.get("pads", [0] * len(extra)))
        merged = [a + b for a, b in zip(own, extra[:half] + extra[half:])]
        for attr in list(conv.attribute):
            if attr.name == "pads":
                conv.attribute.remove(attr)
        conv.attribute.append(helper.make_attribute("pads", merged))
        conv.input[0] = pad.input[0]
        removed.append(pad)
    for pad in removed:
        graph.node.remove(pad)
    return len(removed)
