"""Resize's ``axes`` and ``keep_aspect_ratio_policy`` (opset 18+) made explicit.

The importer reads ``roi``, ``scales`` and ``sizes`` as covering every axis and ignores both
attributes. With constant inputs they are rewritten for it: the listed axes' values are spread
to full rank (scale 1, the input's size, roi 0..1 elsewhere), and a ``not_larger``/
``not_smaller`` policy becomes the sizes it gives, ``round(dim * scale)`` with one scale for
all listed axes (the min or max of ``size / dim``). That is exact when every ``dim * scale``
is a whole number, where ONNX's coordinate mapping (by that scale) equals the importer's (by
the size ratio); other cases are left to the attribute guard, which refuses them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def patch_resize_axes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> int:
    """Rewrite every Resize with constant inputs that uses ``axes``; returns how many."""
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    changed = 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape = shapes.get(node.input[0]) if node.op_type == "Resize" else None
        if shape is None or ("axes" not in attrs and "keep_aspect_ratio_policy" not in attrs):
            continue
        inputs = list(node.input) + [""] * (4 - len(node.input))
        if any(name and name not in constants for name in inputs[1:4]):
            continue
        rank = len(shape)
        axes = [a % rank for a in attrs.get("axes", range(rank))]
        values = {}
        if inputs[1]:
            roi = constants[inputs[1]].reshape(-1)
            full = np.concatenate([np.zeros(rank), np.ones(rank)]).astype(roi.dtype)
            for i, axis in enumerate(axes):
                full[axis], full[rank + axis] = roi[i], roi[len(axes) + i]
            values[1] = full
        if inputs[2] and constants[inputs[2]].size:
            scales = np.ones(rank, constants[inputs[2]].dtype)
            scales[axes] = constants[inputs[2]].reshape(-1)
            values[2] = scales
        if inputs[3]:
            sizes = _policy_sizes(constants[inputs[3]].reshape(-1), shape, axes,
                                  attrs.get("keep_aspect_ratio_policy", b"stretch"))
            if sizes is None:
                continue
            values[3] = sizes
        for position, value in values.items():
            name = f"{node.output[0]}__resize_input{position}"
            graph.initializer.append(numpy_helper.from_array(value, name))
            node.input[position] = name
        kept = [a for a in node.attribute if a.name not in ("axes", "keep_aspect_ratio_policy")]
        del node.attribute[:]
        node.attribute.extend(kept)
        changed += 1
    return changed


def _policy_sizes(given: np.ndarray, shape: tuple[int, ...], axes: list[int],
                  policy) -> np.ndarray | None:
    """Full-rank output sizes, or None when the policy's scale gives a fractional size."""
    policy = policy.decode() if isinstance(policy, bytes) else policy
    sizes = np.array(shape, np.int64)
    if policy == "stretch":
        sizes[axes] = given
        return sizes
    ratios = [given[i] / shape[axis] for i, axis in enumerate(axes)]
    scale = min(ratios) if policy == "not_larger" else max(ratios)
    exact = [shape[axis] * scale for axis in axes]
    if any(abs(size - round(size)) > 1e-6 * max(1.0, size) for size in exact):
        return None
    sizes[axes] = [round(size) for size in exact]
    return sizes
