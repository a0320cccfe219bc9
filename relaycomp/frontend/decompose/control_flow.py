"""If, Loop and Scan inlined or unrolled at compile time.

- ``If`` with a condition known at compile time becomes its branch; otherwise both branches are
  computed and each output selected with ``Where`` (branches must be free of random ops and give
  outputs of equal static shapes).
- ``Loop`` with a trip count known at compile time is unrolled. When its condition turns out to
  depend on data, it carries a "still running" flag and every loop-carried value freezes
  (``Where``) once the flag drops, so the trip count is only the maximum; scan outputs then have
  no static length and are refused.
- ``Scan`` is unrolled over the static length of its scan inputs; Scan-8's batch axis is
  unrolled too (one copy per batch entry).

Sub-graph values are renamed per inlined copy; names the body reads from outer scopes stay.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from relaycomp.errors import OnnxImportError
from relaycomp.frontend.decompose import decomposition, describe
from relaycomp.frontend.decompose.builder import GraphBuilder, attributes
from relaycomp.frontend.decompose.inline import inline_nodes

# Unrolling beyond this many nodes would not compile in any reasonable time.
MAX_UNROLLED_NODES = 200_000
RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform",
                        "RandomUniformLike", "Multinomial", "Bernoulli", "Dropout"})


def _body_mapping(b: GraphBuilder, graph: onnx.GraphProto) -> dict[str, str]:
    """The sub-graph's initializers as new initializers of the main graph (once per node)."""
    mapping = {}
    for init in graph.initializer:
        mapping[init.name] = b.const(numpy_helper.to_array(init), hint=init.name)
    return mapping


def _static_shape(value: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    tensor_type = value.type.tensor_type
    if value.type.WhichOneof("value") != "tensor_type" or not tensor_type.HasField("shape"):
        return None
    dims = tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        return None
    return tuple(d.dim_value for d in dims)


def _random_ops(graph: onnx.GraphProto) -> list[str]:
    found = []
    for node in graph.node:
        if node.op_type in RANDOM_OPS and not (node.op_type == "Dropout"
                                               and len(node.output) < 2):
            found.append(node.op_type)
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                found.extend(_random_ops(sub))
    return found


def _check_size(node: onnx.NodeProto, body: onnx.GraphProto, copies: int) -> None:
    if copies * max(len(body.node), 1) > MAX_UNROLLED_NODES:
        raise OnnxImportError(
            f"node {describe(node)}: unrolling {copies} iterations of a {len(body.node)}-node "
            f"body is more than {MAX_UNROLLED_NODES} nodes",
            hint="pin smaller input shapes with --input, or export with a smaller maximum")


@decomposition("", "If")
def decompose_if(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """Inline the branch a constant condition picks, else select between both with Where."""
    attrs = {a.name: a.g for a in node.attribute}
    then_branch, else_branch = attrs["then_branch"], attrs["else_branch"]
    condition = b.constant(node.input[0])
    if condition is not None:
        branch = then_branch if bool(np.asarray(condition).reshape(-1)[0]) else else_branch
        mapping = inline_nodes(b, branch.node, _body_mapping(b, branch))
        for inner, outer in zip(branch.output, node.output):
            if outer:
                b.alias(mapping.get(inner.name, inner.name), outer, inner.type)
        return
    random = _random_ops(then_branch) + _random_ops(else_branch)
    if random:
        raise OnnxImportError(
            f"node {describe(node)}: its condition is only known at run time and a branch "
            f"draws random numbers ({', '.join(sorted(set(random)))}), so both cannot be run")
    for index, (then_out, else_out) in enumerate(zip(then_branch.output, else_branch.output)):
        then_shape, else_shape = _static_shape(then_out), _static_shape(else_out)
        if then_shape is None or then_shape != else_shape:
            raise OnnxImportError(
                f"node {describe(node)}: its condition is only known at run time and output "
                f"{index} has shapes {then_shape or 'unknown'} and {else_shape or 'unknown'} in "
                "the two branches; relaycomp needs equal static shapes to select between them",
                hint="make the condition a constant in the model, or pin the inputs the "
                     "branch shapes depend on with --input")
    then_map = inline_nodes(b, then_branch.node, _body_mapping(b, then_branch))
    else_map = inline_nodes(b, else_branch.node, _body_mapping(b, else_branch))
    condition = b.op("Reshape", [node.input[0], b.const([], np.int64, "scalar")])
    for then_out, else_out, outer in zip(then_branch.output, else_branch.output, node.output):
        if outer:
            b.op("Where", [condition, then_map.get(then_out.name, then_out.name),
                           else_map.get(else_out.name, else_out.name)], [outer])


@decomposition("", "Loop")
def decompose_loop(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """Unroll a Loop over its trip count (the maximum, when its condition depends on data)."""
    body = next(a.g for a in node.attribute if a.name == "body")
    inputs = list(node.input) + [""] * (2 - len(node.input))
    if not inputs[0]:
        raise OnnxImportError(
            f"node {describe(node)}: a Loop without a maximum trip count cannot be unrolled",
            hint="export the loop with a constant trip count (or maximum)")
    trips = b.int_constant(inputs[0], node, "trip count")
    _check_size(node, body, trips)
    carried = list(inputs[2:])
    n_carried = len(carried)
    scans: list[list[str]] = [[] for _ in body.output[1 + n_carried:]]
    running = None  # bool scalar while the condition depends on data
    if inputs[1]:
        start = b.constant(inputs[1])
        if start is None:
            running = b.op("Reshape", [inputs[1], b.const([], np.int64, "scalar")])
        elif not bool(np.asarray(start).reshape(-1)[0]):
            trips = 0
    constants = _body_mapping(b, body)
    true = None
    for iteration in range(trips):
        true = true or b.const(np.array(True), hint="true")
        mapping = dict(constants)
        mapping[body.input[0].name] = b.const(np.array(iteration, np.int64), hint="iteration")
        mapping[body.input[1].name] = running or true
        for value, current in zip(body.input[2:], carried):
            mapping[value.name] = current
        inline_nodes(b, body.node, mapping)
        outs = [mapping.get(o.name, o.name) for o in body.output]
        if running is None:
            carried = outs[1:1 + n_carried]
            for scan, value in zip(scans, outs[1 + n_carried:]):
                scan.append(value)
            condition = b.constant(outs[0])
            if condition is None:
                running = b.op("Reshape", [outs[0], b.const([], np.int64, "scalar")])
            elif not bool(np.asarray(condition).reshape(-1)[0]):
                break
            continue
        if scans:
            raise OnnxImportError(
                f"node {describe(node)}: its condition depends on data, so its scan outputs "
                "have no length known at compile time",
                hint="relaycomp unrolls such loops only when they carry values, not scan outputs")
        for index, (value, out) in enumerate(zip(body.input[2:], body.output[1:])):
            before, after = _static_shape(value), _static_shape(out)
            if before is None or before != after:
                raise OnnxImportError(
                    f"node {describe(node)}: its condition depends on data and loop-carried "
                    f"value {index} does not keep one static shape ({before} -> {after})",
                    hint="pin the inputs with --input so the shapes are static")
        carried = [b.op("Where", [running, new, old])
                   for new, old in zip(outs[1:1 + n_carried], carried)]
        running = b.op("And", [running, b.op("Reshape", [outs[0], b.const([], np.int64)])])
    for value, inner, outer in zip(carried, body.output[1:], node.output):
        if outer:
            b.alias(value, outer, inner.type)
    for values, inner, outer in zip(scans, body.output[1 + n_carried:], node.output[n_carried:]):
        if not outer:
            continue
        if not values:
            raise OnnxImportError(f"node {describe(node)}: runs zero times, so its scan "
                                  "outputs are empty tensors of unknown shape")
        b.op("Concat", [b.op("Unsqueeze", [v, b.const([0], np.int64, "axes")]) for v in values],
             [outer], axis=0)


@decomposition("", "Scan")
def decompose_scan(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """Unroll a Scan over the static length of its scan inputs (opset 8: per batch entry)."""
    if b.opset < 9:
        _decompose_batched_scan(node, b)
        return
    attrs = attributes(node)
    body = attrs["body"]
    n_scan = int(attrs["num_scan_inputs"])
    n_state = len(node.input) - n_scan
    scan_inputs = list(node.input[n_state:])
    in_axes = list(attrs.get("scan_input_axes", [0] * n_scan))
    in_dirs = list(attrs.get("scan_input_directions", [0] * n_scan))
    n_out = len(body.output) - n_state
    out_axes = list(attrs.get("scan_output_axes", [0] * n_out))
    out_dirs = list(attrs.get("scan_output_directions", [0] * n_out))
    shapes = [b.shape(name, node) for name in scan_inputs]
    in_axes = [axis % len(shape) for axis, shape in zip(in_axes, shapes)]
    states, outputs = _unroll_scan(node, b, body, list(node.input[:n_state]),
                                   list(zip(scan_inputs, in_axes, in_dirs)),
                                   _scan_length(node, shapes, in_axes))
    for value, inner, outer in zip(states, body.output, node.output):
        if outer:
            b.alias(value, outer, inner.type)
    for k, (values, outer) in enumerate(zip(outputs, node.output[n_state:])):
        if not outer:
            continue
        axis = out_axes[k]
        if axis < 0:
            rank = _static_shape(body.output[n_state + k])
            if rank is None:
                raise OnnxImportError(f"node {describe(node)}: scan output {k} has a negative "
                                      "axis and a rank not known at compile time")
            axis += len(rank) + 1
        _stack(b, values[::-1] if out_dirs[k] else values, axis, outer)


def _scan_length(node, shapes: list[tuple[int, ...]], axes: list[int]) -> int:
    lengths = {shape[axis] for shape, axis in zip(shapes, axes)}
    if len(lengths) != 1:
        raise OnnxImportError(f"node {describe(node)}: its scan inputs differ in length "
                              f"({sorted(lengths)})")
    return lengths.pop()


def _unroll_scan(node, b: GraphBuilder, body: onnx.GraphProto, states: list[str],
                 scans: list[tuple[str, int, int]], steps: int,
                 ) -> tuple[list[str], list[list[str]]]:
    """Unroll ``body`` ``steps`` times over ``scans`` ((tensor, axis, reverse) each) from
    ``states``; returns the final states and, per scan output, its value at every step."""
    n_state = len(states)
    if not steps:
        raise OnnxImportError(f"node {describe(node)}: scans a zero-length sequence")
    _check_size(node, body, steps)
    outputs: list[list[str]] = [[] for _ in range(len(body.output) - n_state)]
    constants = _body_mapping(b, body)
    for step in range(steps):
        mapping = dict(constants)
        for value, current in zip(body.input[:n_state], states):
            mapping[value.name] = current
        for value, (name, axis, reverse) in zip(body.input[n_state:], scans):
            mapping[value.name] = b.take(name, steps - 1 - step if reverse else step, axis)
        inline_nodes(b, body.node, mapping)
        outs = [mapping.get(o.name, o.name) for o in body.output]
        states = outs[:n_state]
        for collected, value in zip(outputs, outs[n_state:]):
            collected.append(value)
    return states, outputs


def _stack(b: GraphBuilder, values: list[str], axis: int, output: str | None = None) -> str:
    """``values`` stacked along a new ``axis`` (into ``output`` when given)."""
    parts = [b.op("Unsqueeze", [v, b.const([axis], np.int64, "axes")]) for v in values]
    return b.op("Concat", parts, [output] if output else 1, axis=axis)


def _decompose_batched_scan(node: onnx.NodeProto, b: GraphBuilder) -> None:
    """Scan-8: states ``[B, ...]`` and scan inputs ``[B, T, ...]`` (axis 1), the body run per
    batch entry; outputs stacked back on axis 0. ``sequence_lens`` (input 0) must be absent or
    a constant equal to ``T`` everywhere (variable lengths are refused)."""
    attrs = attributes(node)
    body = attrs["body"]
    n_scan = int(attrs["num_scan_inputs"])
    n_state = len(node.input) - 1 - n_scan
    states = list(node.input[1:1 + n_state])
    scan_inputs = list(node.input[1 + n_state:])
    directions = list(attrs.get("directions", [0] * n_scan))
    shapes = [b.shape(name, node) for name in scan_inputs]
    batch, steps = shapes[0][0], _scan_length(node, shapes, [1] * n_scan)
    if node.input[0]:
        lengths = b.constant(node.input[0])
        if lengths is None or not np.all(np.asarray(lengths) == steps):
            raise OnnxImportError(
                f"node {describe(node)}: Scan-8 with sequence_lens other than the full length "
                f"{steps} is not supported", hint="convert the model to opset 9+ (no lengths)")
    finals: list[list[str]] = [[] for _ in range(n_state)]
    outputs: list[list[str]] = [[] for _ in range(len(body.output) - n_state)]
    for entry in range(batch):
        entry_states = [b.take(state, entry, 0) for state in states]
        scans = [(b.take(name, entry, 0), 0, reverse)
                 for name, reverse in zip(scan_inputs, directions)]
        entry_states, entry_outputs = _unroll_scan(node, b, body, entry_states, scans, steps)
        for collected, value in zip(finals, entry_states):
            collected.append(value)
        for collected, values in zip(outputs, entry_outputs):
            collected.append(_stack(b, values, 0))
    for values, outer in zip(finals + outputs, node.output):
        if outer:
            _stack(b, values, 0, outer)
