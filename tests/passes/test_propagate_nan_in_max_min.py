"""propagate_nan_in_max_min (with unstack_max_min for ONNX Max/Min): NaN and Inf inputs give the
outputs onnxruntime gives - through ReLU, Clip, Max, Min, fused conv/matmul epilogues and a fused
chain of clips, and max pooling where its result does not depend on a kernel's loop order -, the
fused ReLU stays one packed ``vmaxps`` per vector and a fused chain of clips one copy of its
input."""

import re

import numpy as np
import pytest
import tvm
import tvm_ffi
from helpers import ort_outputs
from onnx import TensorProto, helper, numpy_helper
from tvm import s_tir, te, tirx, topi

import relaycomp
from relaycomp.compiler.pipeline import PIPELINES, Stage, default_stages, run_stages
from relaycomp.ir import loaded_buffer
from relaycomp.passes.propagate_nan_in_max_min import propagate_nan_in_max_min, rewrite_primfunc
from relaycomp.rewrite.float_bits import is_nan
from relaycomp.targets import resolve

SHAPE = [1, 4, 6, 6]


def _model(nodes, inputs=("x",), initializers=(), opset=17, output_shape=None):
    graph = helper.make_graph(
        nodes, "nan", [helper.make_tensor_value_info(n, TensorProto.FLOAT, SHAPE) for n in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
        list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _special_values(seed: int) -> np.ndarray:
    """Random values with NaN, +Inf and -Inf sprinkled in (and -0)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(SHAPE).astype(np.float32) * 4
    flat = x.reshape(-1)
    picks = rng.choice(flat.size, 24, replace=False)
    flat[picks[:12]] = np.nan
    flat[picks[12:16]] = np.inf
    flat[picks[16:20]] = -np.inf
    flat[picks[20:]] = -0.0
    return x


def _bounds(low: float, high: float):
    return [numpy_helper.from_array(np.array(low, np.float32), "low"),
            numpy_helper.from_array(np.array(high, np.float32), "high")]


def _weight(name, shape, seed=0):
    return numpy_helper.from_array(
        np.random.default_rng(seed).standard_normal(shape).astype(np.float32), name)


MODELS = {
    "relu": lambda: _model([helper.make_node("Relu", ["x"], ["y"])]),
    "clip_relu6": lambda: _model([helper.make_node("Clip", ["x", "low", "high"], ["y"])],
                                 initializers=_bounds(0.0, 6.0)),
    "clip_opset6": lambda: _model([helper.make_node("Clip", ["x"], ["y"], min=-1.0, max=1.0)],
                                  opset=6),
    "max": lambda: _model([helper.make_node("Max", ["x", "z"], ["y"])], inputs=("x", "z")),
    "min_of_three": lambda: _model([helper.make_node("Min", ["x", "z", "w"], ["y"])],
                                   inputs=("x", "z", "w")),
    "conv_bias_relu": lambda: _model(
        [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])],
        initializers=[_weight("cw", [8, 4, 3, 3]), _weight("cb", [8], 1)]),
    "conv_relu6": lambda: _model(
        [helper.make_node("Conv", ["x", "cw"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Clip", ["c", "low", "high"], ["y"])],
        initializers=[_weight("cw", [8, 4, 3, 3]), *_bounds(0.0, 6.0)]),
    "matmul_bias_relu": lambda: _model(
        [helper.make_node("MatMul", ["x", "mw"], ["m"]),
         helper.make_node("Add", ["m", "mb"], ["a"]),
         helper.make_node("Relu", ["a"], ["y"])],
        initializers=[_weight("mw", [6, 16]), _weight("mb", [16], 1)]),
    "clip_chain": lambda: _clip_chain(6),
    "max_of_sums": lambda: _model(  # fused: neither operand a load (llvm.maximum on x86)
        [helper.make_node("Add", ["x", "z"], ["s"]), helper.make_node("Sub", ["x", "z"], ["d"]),
         helper.make_node("Max", ["s", "d"], ["y"])], inputs=("x", "z")),
}


def _clip_chain(links: int):
    """``links`` times Add + Clip, which fusion makes one kernel (an int8 epilogue's chain of
    requantizing clips looks alike)."""
    nodes, previous = [], "x"
    for i in range(links):
        nodes += [helper.make_node("Add", [previous, "one"], [f"a{i}"]),
                  helper.make_node("Clip", [f"a{i}", "low", "high"], [f"c{i}"])]
        previous = f"c{i}"
    nodes.append(helper.make_node("Identity", [previous], ["y"]))
    return _model(nodes, initializers=[
        *_bounds(-6.0, 6.0), numpy_helper.from_array(np.array(0.5, np.float32), "one")])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_nan_and_inf_come_out_where_onnxruntime_puts_them(name, tmp_path):
    model = MODELS[name]()
    inputs = {i.name: _special_values(seed) for seed, i in enumerate(model.graph.input)}
    artifact = relaycomp.compile(model, tmp_path / "model.so",
                                 inputs={k: v.shape for k, v in inputs.items()})
    actual = relaycomp.load(artifact.path).run(inputs)["y"]
    expected = ort_outputs(model, inputs)["y"]
    assert np.isnan(expected).any(), "the case must exercise NaN"
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4, equal_nan=True)


def test_max_pooling_agrees_with_onnxruntime_wherever_its_result_is_defined(tmp_path):
    """Max pooling keeps ``acc > x ? acc : x`` (a reduction its schedules must recognise), as
    onnxruntime's MLAS kernel keeps x86's ``maxps``: a window with some NaN gives NaN or one of
    its values depending on where the NaN is in each kernel's loop order. Windows without NaN
    agree exactly, all-NaN windows are NaN in both."""
    model = _model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2],
                                     strides=[2, 2])])
    x = _special_values(0)
    x[0, 3, :2, :2] = np.nan  # one all-NaN window
    artifact = relaycomp.compile(model, tmp_path / "model.so", inputs={"x": x.shape})
    actual = relaycomp.load(artifact.path).run({"x": x})["y"]
    expected = ort_outputs(model, {"x": x})["y"]
    windows = np.isnan(x).reshape(1, 4, 3, 2, 3, 2)
    some_nan, all_nan = windows.any(axis=(3, 5)), windows.all(axis=(3, 5))
    assert all_nan.any() and (some_nan & ~all_nan).any()
    np.testing.assert_array_equal(actual[~some_nan], expected[~some_nan])
    assert np.isnan(actual[all_nan]).all() and np.isnan(expected[all_nan]).all()


def test_an_all_nan_input_gives_nan_logits_like_onnxruntime(tmp_path):
    from relaycomp.frontend.examples import resolve_model_path
    from relaycomp.frontend.onnx_import import load_onnx

    model = load_onnx(resolve_model_path("example:digits"))
    spec = model.graph.input[0]
    shape = [d.dim_value or 1 for d in spec.type.tensor_type.shape.dim]
    inputs = {spec.name: np.full(shape, np.nan, np.float32)}
    artifact = relaycomp.compile(model, tmp_path / "digits.so", inputs={spec.name: shape})
    actual = next(iter(relaycomp.load(artifact.path).run(inputs).values()))
    expected = next(iter(ort_outputs(model, inputs).values()))
    assert np.isnan(expected).all()
    assert np.isnan(actual).all(), f"finite logits from an all-NaN input: {actual}"


ZERO = tirx.const(0.0, "float32")


def _elementwise(compute) -> tirx.PrimFunc:
    """A kernel ``y[i] = compute(x[i], z[i])`` over two inputs of 8 floats."""
    x, z = (te.placeholder((8,), "float32", name=name) for name in ("x", "z"))
    return te.create_prim_func([x, z, te.compute((8,), lambda i: compute(x(i), z(i)),
                                                 name="compute")])


def _assert_stores(after: tirx.PrimFunc, expected: tirx.PrimFunc):
    """The two kernels store the same value (their blocks may list what they read in another
    order)."""
    (value,), (expected_value,) = _stored_values(after), _stored_values(expected)
    tvm.ir.assert_structural_equal(value, expected_value, map_free_vars=True)


@pytest.mark.parametrize("form, expected", [
    # TVM's LLVM max(p, q) is p > q ? p : q, which gives q when it is NaN: the same compare and
    # select as x < 0 ? 0 : x
    ("llvm", lambda x, z: tirx.Max(ZERO, x)),
    ("select", lambda x, z: tirx.Select(x < ZERO, ZERO, x)),
    ("native", lambda x, z: tirx.call_llvm_pure_intrin("float32", "llvm.maximum", x, ZERO)),
])
def test_relu_keeps_nan(form, expected):
    after, count = rewrite_primfunc(_elementwise(lambda x, z: tirx.max(x, ZERO)), form)
    assert count == 1
    _assert_stores(after, _elementwise(expected))


@pytest.mark.parametrize("form, expected", [
    ("llvm", lambda x, z: tirx.Select(is_nan(z), z, tirx.Min(z, x))),
    ("select", lambda x, z: tirx.Select(tirx.Or(tirx.GT(x, z), is_nan(z)), z, x)),
])
def test_min_of_two_tensors_keeps_a_nan_of_either(form, expected):
    before = _elementwise(tirx.min)
    (minimum,) = _stored_values(before)
    after, count = rewrite_primfunc(before, form)
    assert count == 1
    tvm.ir.assert_structural_equal(_stored_values(after), [expected(minimum.a, minimum.b)])


@pytest.mark.parametrize("form, before, expected", [
    # an expression (what fusion inlines) named once: the second operand of max, after the
    # constant or the load whose NaN is tested; the LLVM intrinsic when no operand is a load
    ("llvm", lambda x, z: tirx.max(x + 1.0, ZERO), lambda x, z: tirx.Max(ZERO, x + 1.0)),
    ("llvm", lambda x, z: tirx.max(x + 1.0, z),
     lambda x, z: tirx.Select(is_nan(z), z, tirx.Max(z, x + 1.0))),
    ("llvm", lambda x, z: tirx.max(x + 1.0, z * 2.0),
     lambda x, z: tirx.call_llvm_pure_intrin("float32", "llvm.maximum", x + 1.0, z * 2.0)),
    # C source: bound once, then named twice
    ("select", lambda x, z: tirx.max(x + 1.0, ZERO),
     lambda x, z: _bound(x + 1.0, lambda v: tirx.Select(v < ZERO, ZERO, v))),
])
def test_an_expression_operand_is_named_once(form, before, expected):
    after, count = rewrite_primfunc(_elementwise(before), form)
    assert count == 1
    _assert_stores(after, _elementwise(expected))


def _bound(value, body):
    var = tirx.Var("nan_operand", value.ty)
    return tirx.Let(var, value, body(var))


def test_c_source_binds_nothing_inside_an_if_then_else():
    """CUDA's code generator emits a let as a declaration before the statement: bound, an
    operand inside an if_then_else's branch would be evaluated when the branch is not taken."""
    def guarded(select):
        return lambda x, z: tirx.if_then_else(z > ZERO, select(x + 1.0), ZERO)

    after, count = rewrite_primfunc(_elementwise(guarded(lambda v: tirx.max(v, ZERO))), "select")
    assert count == 1
    _assert_stores(after, _elementwise(guarded(lambda v: tirx.Select(v < ZERO, ZERO, v))))


def _stored_values(func) -> list:
    values = []
    tvm_ffi.structural_walk(func, (tirx.BufferStore, lambda store: values.append(store.value)))
    return values


def test_a_scheduled_max_pool_keeps_its_combiner_and_rewrites_the_inlined_relu():
    """After scheduling, the update of a max pooling has no ``init`` of its own (decomposed) and
    may hold a ReLU inlined into it: the combiner stays ``max``, the ReLU is rewritten."""
    x = te.placeholder((1, 2, 4, 4), "float32", name="x")
    relu = topi.nn.relu(x)
    pool = topi.nn.pool2d(relu, (2, 2), (2, 2), (1, 1), (0, 0, 0, 0), "max")
    sch = s_tir.Schedule(te.create_prim_func([x, pool]))
    sch.compute_inline(sch.get_sblock("compute"))
    update = sch.get_sblock("pool_max")
    sch.decompose_reduction(update, sch.get_loops(update)[-2])
    after, count = rewrite_primfunc(sch.mod["main"], "select")
    assert count == 1
    (_, combined) = _stored_values(after)  # the init, then the update
    assert isinstance(combined, tirx.Max) and loaded_buffer(combined.a).name == "pool_max"
    assert isinstance(combined.b, tirx.Select), combined


def test_reductions_and_integers_are_left_alone():
    x = te.placeholder((1, 2, 4, 4), "float32", name="x")
    pool = te.create_prim_func([x, topi.nn.pool2d(x, (2, 2), (2, 2), (1, 1), (0, 0, 0, 0),
                                                  "max")])
    n = te.placeholder((8,), "int32", name="n")
    clamp = te.create_prim_func([n, topi.maximum(n, 0)])
    for func in (pool, clamp):
        after, count = rewrite_primfunc(func)
        assert count == 0 and after.same_as(func)


def test_the_pass_reports_what_it_rewrote():
    x = te.placeholder((8,), "float32", name="x")
    mod = tvm.IRModule({"relu6": te.create_prim_func([x, topi.clip(x, 0.0, 6.0)])})
    report = {}
    propagate_nan_in_max_min(report=report)(mod)
    assert report == {"kernels": 1, "max_min_rewritten": 2}


def _conv_relu_assembly(skip: tuple[str, ...] = ()) -> str:
    model = MODELS["conv_bias_relu"]()
    mod = relaycomp.import_onnx(model, {"x": SHAPE}).mod
    stages = [Stage(name, tuple(p for p in passes if p not in skip))
              for name, passes in PIPELINES["llvm"]]
    target = resolve("x86-64-avx512", num_cores=2).tvm_target()
    mod, _ = run_stages(mod, stages, target)
    library = tvm.compile(mod, target, relax_pipeline=None).mod.imports[0]
    return library.inspect_source("asm")


def test_the_fused_relu_stays_one_packed_max_per_vector():
    """LLVM turns ``x < 0 ? 0 : x`` into ``vmaxps`` with the operands swapped (x86's max returns
    its second operand on NaN): as many packed maxes as ``max(x, 0)`` gave, none scalar."""
    asm = _conv_relu_assembly()
    stock = _conv_relu_assembly(skip=("propagate_nan_in_max_min",))
    packed = re.findall(r"vmaxps\s+%([xyz]mm\d+), %([xyz]mm\d+)", asm)
    assert packed and len(packed) == len(re.findall(r"vmaxps\s", stock))
    assert not re.search(r"vmaxss|vblendv|vcmp\w*ss", asm), "the epilogue was scalarized"
    assert asm.count("(%rsp)") == stock.count("(%rsp)"), "more stack traffic (spills)"


def test_a_fused_chain_of_clips_keeps_one_copy_of_its_input():
    """Fused, Add + Clip six times is one kernel loading ``x`` once: each select names its
    operand twice, and rewritten before fusion inlined the chain, a kernel held 4^6 copies
    (PP-OCR's int8 epilogues grew 11x, code generation took minutes per kernel)."""
    mod = relaycomp.import_onnx(MODELS["clip_chain"](), {"x": SHAPE}).mod
    stages = [stage for stage in default_stages("llvm") if stage.name != "lower"]
    mod, report = run_stages(mod, stages, resolve("x86-64-avx512", num_cores=2).tvm_target())
    (kernel,) = [f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]
    loads = []
    tvm_ffi.structural_walk(kernel, (tvm.ir.expr.TensorLoad, loads.append))
    assert sum(loaded_buffer(load).name == "x" for load in loads) == 1, kernel.script()
    assert report.facts("propagate_nan_in_max_min") == {"kernels": 1, "max_min_rewritten": 12}
