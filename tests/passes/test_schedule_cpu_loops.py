"""schedule_cpu_loops: every fused PrimFunc gets a parallel, vectorized CPU schedule; numerics stay.

Each numeric test builds one small Relax function, compiles it through the cpu_generic pipeline
with and without the pass, runs both and compares.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
import tvm_ffi
from helpers import scalarized_loops
from tvm import relax, s_tir, tirx
from tvm.relax.backend.cpu_generic import pipeline as cpu
from tvm.s_tir.dlight.base import ScheduleRule

from relaycomp.passes.schedule_cpu_loops import RULE_ATTR, schedule_cpu_loops, schedule_report
from relaycomp.schedules.cpu.common import cpu_facts
from relaycomp.schedules.cpu.elementwise import GuardedRule
from relaycomp.schedules.cpu.plan import plan_contraction

R = relax.op
TARGET = tvm.target.Target({"kind": "llvm", "num-cores": 2})


def _function(inputs: dict[str, tuple], body) -> tvm.IRModule:
    """A Relax module whose ``main`` takes float32 ``inputs`` and returns ``body(*vars)``."""
    builder = relax.BlockBuilder()
    params = [relax.Var(name, relax.TensorType(shape, "float32")) for name, shape in inputs.items()]
    with builder.function("main", params):
        with builder.dataflow():
            output = builder.emit_output(body(*params))
        builder.emit_func_output(output)
    return builder.get()


def _legalized(mod: tvm.IRModule, scheduled: bool) -> tvm.IRModule:
    passes = cpu.library_dispatch_passes(TARGET) + cpu.legalize_passes(TARGET)
    passes += [schedule_cpu_loops(TARGET)] if scheduled else []
    with TARGET:
        return tvm.transform.Sequential(passes)(mod)


def _run(mod: tvm.IRModule, arrays: list[np.ndarray], scheduled: bool) -> np.ndarray:
    mod = _legalized(mod, scheduled)
    with TARGET:
        mod = tvm.transform.Sequential(
            cpu.dataflow_lower_passes(TARGET) + cpu.finalize_passes(TARGET)
        )(mod)
    vm = relax.VirtualMachine(tvm.compile(mod, TARGET, relax_pipeline=None), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in arrays]).numpy()


def _assert_schedule_keeps_numerics(inputs: dict[str, tuple], body, shapes=None) -> None:
    """Scheduled and unscheduled builds agree to fp32 rounding on random data."""
    rng = np.random.default_rng(0)
    shapes = shapes or inputs
    arrays = [rng.standard_normal(shape).astype("float32") for shape in shapes.values()]
    mod = _function(inputs, body)
    expected = _run(mod, arrays, scheduled=False)
    actual = _run(mod, arrays, scheduled=True)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def _is_prim(func) -> bool:
    return isinstance(func, tirx.PrimFunc)


def _rule(func) -> str | None:
    return str(func.attrs.get(RULE_ATTR, "")) if _is_prim(func) and func.attrs else None


def _loop_kinds(func: tirx.PrimFunc) -> set:
    kinds = set()
    tvm_ffi.structural_walk(func.body, (tirx.For, lambda loop: kinds.add(loop.kind)))
    return kinds


def _conv(x, w, stride=1, padding=1, groups=1):
    return R.nn.conv2d(x, w, strides=stride, padding=padding, groups=groups)


CONV_CASES = {
    "3x3_pad1_stride2": ({"x": (1, 8, 10, 10), "w": (16, 8, 3, 3)}, lambda x, w: _conv(x, w, 2)),
    "1x1": ({"x": (1, 8, 6, 6), "w": (16, 8, 1, 1)}, lambda x, w: _conv(x, w, padding=0)),
    "depthwise": ({"x": (1, 16, 9, 9), "w": (16, 1, 3, 3)}, lambda x, w: _conv(x, w, groups=16)),
    "depthwise_stride2": (
        {"x": (1, 16, 10, 10), "w": (16, 1, 3, 3)},
        lambda x, w: _conv(x, w, 2, groups=16),
    ),
    "grouped": ({"x": (1, 16, 8, 8), "w": (16, 4, 3, 3)}, lambda x, w: _conv(x, w, groups=4)),
    # 14 wide: a register tile over two axes (2 output rows x 2 pixels x 16 channels)
    "3x3_14_wide": ({"x": (1, 8, 14, 14), "w": (32, 8, 3, 3)}, lambda x, w: _conv(x, w)),
    "1x1_stride2_14_wide": (
        {"x": (1, 8, 28, 28), "w": (16, 8, 1, 1)},
        lambda x, w: _conv(x, w, 2, padding=0),
    ),
}


@pytest.mark.parametrize("case", CONV_CASES, ids=list(CONV_CASES))
def test_conv2d_keeps_numerics(case):
    _assert_schedule_keeps_numerics(*CONV_CASES[case])


def test_conv_bias_relu_epilogue_keeps_numerics():
    _assert_schedule_keeps_numerics(
        {"x": (1, 8, 12, 12), "w": (16, 8, 3, 3), "b": (1, 16, 1, 1)},
        lambda x, w, b: R.nn.relu(R.add(_conv(x, w), b)),
    )


def test_conv_residual_add_keeps_numerics():
    _assert_schedule_keeps_numerics(
        {"x": (1, 16, 8, 8), "w": (16, 16, 3, 3)},
        lambda x, w: R.nn.relu(R.add(_conv(x, w), x)),
    )


@pytest.mark.parametrize("transpose_b", [False, True], ids=["B[k,n]", "B[n,k]"])
def test_dense_bias_keeps_numerics(transpose_b):
    _assert_schedule_keeps_numerics(
        {"a": (4, 32), "b": (24, 32) if transpose_b else (32, 24), "bias": (24,)},
        lambda a, b, bias: R.add(R.matmul(a, R.permute_dims(b) if transpose_b else b), bias),
    )


@pytest.mark.parametrize("shapes", [((8, 1), (1, 8)), ((2, 4, 8, 1), (2, 4, 1, 8))],
                         ids=["2d", "batched"])
def test_a_matmul_over_a_single_column_with_an_add_keeps_numerics(shapes):
    # The reduction axis has extent 1, so the block looks injective but keeps its init: inlining
    # the add into it once added the addend twice (a silent wrong answer).
    a, b = shapes
    _assert_schedule_keeps_numerics({"a": a, "b": b, "c": (*a[:-1], b[-1])},
                                    lambda a, b, c: R.add(R.matmul(a, b), c))


def test_batch_matmul_keeps_numerics():
    _assert_schedule_keeps_numerics(
        {"a": (3, 5, 16), "b": (3, 16, 24)}, lambda a, b: R.matmul(a, b)
    )


POOL_CASES = {
    "max_pool": lambda x: R.nn.max_pool2d(x, pool_size=3, strides=2, padding=1),
    "avg_pool": lambda x: R.nn.avg_pool2d(x, pool_size=2, strides=2),
    "global_avg_pool": lambda x: R.mean(x, axis=[2, 3], keepdims=True),
}


@pytest.mark.parametrize("case", POOL_CASES, ids=list(POOL_CASES))
def test_pooling_keeps_numerics(case):
    _assert_schedule_keeps_numerics({"x": (1, 8, 16, 16)}, POOL_CASES[case])


def test_softmax_keeps_numerics():
    _assert_schedule_keeps_numerics({"x": (6, 40)}, lambda x: R.nn.softmax(x, axis=-1))


def test_transpose_and_reshape_keep_numerics():
    _assert_schedule_keeps_numerics(
        {"x": (2, 3, 8, 5)}, lambda x: R.reshape(R.permute_dims(x, [0, 2, 3, 1]), (2, 120))
    )


def test_symbolic_batch_dense_keeps_numerics():
    n = tirx.Var("n", "int64")
    _assert_schedule_keeps_numerics(
        {"x": (n, 32), "w": (32, 16)},
        lambda x, w: R.nn.relu(R.matmul(x, w)),
        shapes={"x": (3, 32), "w": (32, 16)},
    )


def test_symbolic_batch_conv_is_scheduled_and_keeps_numerics():
    n = tirx.Var("n", "int64")
    inputs, body = {"x": (n, 4, 8, 8), "w": (8, 4, 3, 3)}, lambda x, w: R.nn.relu(_conv(x, w))
    _assert_schedule_keeps_numerics(inputs, body, shapes={"x": (2, 4, 8, 8), "w": (8, 4, 3, 3)})
    report = schedule_report(_legalized(_function(inputs, body), scheduled=True))
    assert report["by_rule"].get("contraction") == 1


@pytest.mark.parametrize(
    "inputs, body",
    [
        ({"x": (1, 8, 12, 12), "w": (16, 8, 3, 3)}, lambda x, w: R.nn.relu(_conv(x, w))),
        ({"a": (8, 32), "b": (32, 64)}, lambda a, b: R.matmul(a, b)),
    ],
    ids=["conv2d", "dense"],
)
def test_contraction_gets_parallel_and_vectorized_loops(inputs, body):
    mod = _legalized(_function(inputs, body), scheduled=True)
    (func,) = [f for _, f in mod.functions_items() if _rule(f) == "contraction"]
    assert {tirx.ForKind.PARALLEL, tirx.ForKind.VECTORIZED} <= _loop_kinds(func)


FACTS = cpu_facts(TARGET)
LANES = FACTS.lanes("float32")


def _conv_plan(x_shape, w_shape, stride=1, groups=1, facts=None):
    """The heuristic plan of a conv2d block, and the block's iterator names."""
    mod = _legalized(_function({"x": x_shape, "w": w_shape},
                               lambda x, w: _conv(x, w, stride, groups=groups)), scheduled=False)
    (func,) = [f for _, f in mod.functions_items() if _is_prim(f) and "conv" in str(f)]
    sch = s_tir.Schedule(func)
    (block,) = [b for b in sch.get_child_blocks(sch.get_sblock("root"))
                if len(sch.get(b).iter_vars) == 7]
    iters = [str(it.var.name) for it in sch.get(block).iter_vars]
    return plan_contraction(sch.get(block), facts or FACTS), iters


@pytest.mark.parametrize("stride", [1, 2])
def test_a_14_wide_conv_tiles_two_output_rows(stride):
    # One axis allows 7 pixels x 1 vector = 7 accumulators, too few to keep 2 FMA pipes of
    # 4-cycle latency busy; 2 rows x 2 pixels x 2 vectors hold 8.
    plan, iters = _conv_plan((1, 8, 14 * stride, 14 * stride), (32, 8, 3, 3), stride)
    assert iters[plan.vector_iter] == "v_ff" and plan.vector_tile == 2 * LANES
    assert iters[plan.register_iter] == "v_xx" and plan.register_tile == 2
    assert iters[plan.outer_register_iter] == "v_yy" and plan.outer_register_tile == 2


@pytest.mark.parametrize("width", [7, 28])
def test_a_conv_whose_width_fills_the_tile_keeps_one_register_axis(width):
    # 28 wide: 4 pixels x 2 vectors already hold 8 accumulators; 7 wide (7 rows of 7): no
    # second axis gives more than 7 pixels x 1 vector.
    plan, iters = _conv_plan((1, 8, width, width), (32, 8, 3, 3))
    assert iters[plan.register_iter] == "v_xx"
    assert plan.outer_register_iter is None and plan.outer_register_tile == 1
    vectors, pixels = (1, 7) if width == 7 else (2, 4)
    assert (plan.vector_tile, plan.register_tile) == (vectors * LANES, pixels)


def test_a_row_of_a_depthwise_conv_takes_at_most_eight_vectors():
    """No register axis (NCHW depthwise, vectors along the row): every vector needs its own
    inputs and the epilogue holds them all - a 320-wide row gets 5 vectors, not 10."""
    avx512 = cpu_facts(tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512",
                                          "num-cores": 2}))
    plan, iters = _conv_plan((1, 16, 6, 320), (16, 1, 3, 3), groups=16, facts=avx512)
    assert iters[plan.vector_iter] == "v_xx" and plan.register_iter is None
    assert plan.vector_tile == 5 * 16  # 20 vectors a row: 5 divide it, 10 would too


def test_the_second_register_axis_is_unrolled_in_the_schedule():
    mod = _legalized(_function({"x": (1, 8, 14, 14), "w": (32, 8, 3, 3)},
                               lambda x, w: _conv(x, w)), scheduled=True)
    (func,) = [f for _, f in mod.functions_items() if _rule(f) == "contraction"]
    unrolled = []
    tvm_ffi.structural_walk(func.body, (tirx.For, lambda loop: unrolled.append(
        int(loop.extent)) if loop.kind == tirx.ForKind.UNROLLED else None))
    assert unrolled.count(2) >= 4  # rows and pixels, in the update and the init of the tile


def test_single_core_target_gets_no_parallel_loops():
    single_core = tvm.target.Target({"kind": "llvm", "num-cores": 1})
    mod = _function({"x": (1, 8, 12, 12), "w": (16, 8, 3, 3)}, lambda x, w: _conv(x, w))
    with single_core:
        mod = tvm.transform.Sequential(
            cpu.legalize_passes(single_core) + [schedule_cpu_loops(single_core)]
        )(mod)
    kinds = set().union(*(_loop_kinds(f) for _, f in mod.functions_items() if _is_prim(f)))
    assert tirx.ForKind.VECTORIZED in kinds and tirx.ForKind.PARALLEL not in kinds


def test_report_counts_every_prim_func():
    mod = _function(
        {"x": (1, 8, 12, 12)},
        lambda x: R.nn.softmax(R.reshape(R.nn.relu(R.nn.max_pool2d(x, 2, 2)), (8, 36)), axis=-1),
    )
    unscheduled = _legalized(mod, scheduled=False)
    names = sorted(g.name_hint for g, f in unscheduled.functions_items() if _is_prim(f))
    assert schedule_report(unscheduled) == {
        "scheduled": 0, "unscheduled": len(names), "by_rule": {}, "unscheduled_funcs": names
    }
    report = schedule_report(_legalized(mod, scheduled=True))
    assert (report["scheduled"], report["unscheduled"]) == (len(names), 0)
    assert sum(report["by_rule"].values()) == len(names)


def test_constant_weight_is_repacked_at_compile_time():
    weight = relax.const(np.ones((16, 8, 3, 3), "float32"))
    mod = _legalized(_function({"x": (1, 8, 12, 12)}, lambda x: _conv(x, weight)), True)
    assert schedule_report(mod)["by_rule"] == {"contraction": 1}


def test_input_weight_is_repacked_by_a_kernel_of_its_own():
    mod = _function({"x": (1, 8, 12, 12), "w": (16, 8, 3, 3)}, lambda x, w: _conv(x, w))
    report = schedule_report(_legalized(mod, scheduled=True))
    assert report["by_rule"] == {"contraction": 1, "weight_prepack": 1}


def test_non_cpu_target_leaves_module_unchanged():
    mod = _legalized(_function({"x": (4, 8)}, lambda x: R.nn.relu(x)), scheduled=False)
    after = schedule_cpu_loops(tvm.target.Target("c"))(mod)
    tvm.ir.assert_structural_equal(after, mod)


def test_already_scheduled_function_is_left_alone():
    mod = _legalized(_function({"x": (4, 8)}, lambda x: R.nn.relu(x)), scheduled=False)
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            mod[gvar] = func.with_attr("tirx.is_scheduled", True)
    with TARGET:
        after = schedule_cpu_loops(TARGET)(mod)
    tvm.ir.assert_structural_equal(after, mod)
    assert schedule_report(after)["by_rule"] == {"external": 1}


def test_a_rule_that_raises_counts_as_not_applicable():
    class Broken(ScheduleRule):
        def apply(self, func, target, tunable):
            raise RuntimeError("broken rule")

    mod = _legalized(_function({"x": (4, 8)}, lambda x: R.nn.relu(x)), scheduled=False)
    (func,) = [f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]
    assert GuardedRule("broken", Broken()).apply(func, TARGET, False) is None


def _concat_padded(a, b):
    return R.nn.pad(R.concat([a, b], axis=1), [0, 0, 0, 0, 1, 1, 1, 1], pad_value=0.5)


def test_a_padded_concat_keeps_numerics():
    _assert_schedule_keeps_numerics({"a": (1, 3, 20, 21), "b": (1, 5, 20, 21)}, _concat_padded)


@pytest.mark.parametrize(("inputs", "body", "split"), [
    ({"a": (1, 3, 20, 21), "b": (1, 5, 20, 21)}, _concat_padded, True),
    ({"a": (1, 3, 20, 21)}, lambda a: R.nn.pad(a, [0, 0, 0, 0, 1, 1, 1, 1]), False),
], ids=["concat-then-pad", "one-input-pad"])
def test_padding_of_several_inputs_is_filled_by_a_block_of_its_own(inputs, body, split):
    """The pad value in a fill block, the interior written without a bounds test per element
    (int8 PP-OCRv4 det's resized-concat-padded neck: 2.68 -> 0.47 ms on Zen 5); a one-input
    pad stays one block (split, measured slower)."""
    scheduled = _legalized(_function(inputs, body), scheduled=True)
    [kernel] = [f for f in scheduled.functions.values() if _rule(f) == "injective"]
    assert ("_pad_const" in kernel.script()) == split


def _blocked_concat(pieces: int = 4, channels: int = 24, block: int = 16, size: int = 6):
    """``out[n, C, y, x, c]``: the concat of ``pieces`` blocked (``NCHW16c``) tensors of
    ``channels`` channels each, written blocked - PP-OCRv4 det's neck: which piece a lane reads
    depends on the channel block and on the lane."""
    from tvm import te

    parts = [te.placeholder((1, -(-channels // block), size, size, block), name=f"p{i}")
             for i in range(pieces)]

    def value(n, cb, y, x, lane):
        channel = cb * block + lane
        result = None
        for i in reversed(range(pieces)):
            offset = channel - i * channels
            read = parts[i][n, offset // block, y, x, offset % block]
            result = read if result is None else tirx.if_then_else(
                channel < (i + 1) * channels, read, result)
        return result

    out = te.compute((1, pieces * channels // block, size, size, block), value, name="concat")
    return te.create_prim_func([*parts, out])


@pytest.mark.parametrize(("mcpu", "vectors"), [("skylake-avx512", 12), ("haswell", 6)],
                         ids=["16 lanes", "8 lanes"])
def test_a_concat_of_blocked_pieces_is_vector_code_per_channel_block(mcpu, vectors):
    """24-channel pieces in ``NCHW16c``: a piece starts in the middle of a block. One block
    copy per channel block, and per 8 lanes where a vector would straddle two pieces (two per
    16-lane block), so that every copy reads one piece at constant offsets and TVM vectorizes
    it (a straddling vector scalarized the whole loop: PP-OCRv4 det's neck)."""
    from relaycomp.schedules.cpu.elementwise import InjectiveRule

    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    func = _blocked_concat()
    sch = InjectiveRule().apply(func, target, False)
    assert sch is not None
    loops = {}
    tvm_ffi.structural_walk(sch.mod["main"].body, (tirx.For, lambda loop: loops.setdefault(
        tirx.ForKind(int(loop.kind)), []).append(int(loop.extent))))
    assert loops[tirx.ForKind.VECTORIZED] == [8] * vectors
    assert not scalarized_loops(sch.mod)

    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((1, 2, 6, 6, 16)).astype("float32") for _ in range(4)]
    out = tvm.runtime.tensor(np.zeros((1, 6, 6, 6, 16), "float32"))
    kernel = tvm.compile(sch.mod, target=tvm.target.Target({"kind": "llvm", "num-cores": 2}))
    kernel(*[tvm.runtime.tensor(p) for p in parts], out)
    nchw = np.concatenate([p.transpose(0, 1, 4, 2, 3).reshape(1, 32, 6, 6)[:, :24]
                           for p in parts], axis=1)
    expected = nchw.reshape(1, 6, 16, 6, 6).transpose(0, 1, 3, 4, 2)
    np.testing.assert_array_equal(out.numpy(), expected)


def test_a_concat_large_enough_to_share_is_parallel_around_its_block_copies():
    from relaycomp.schedules.cpu.elementwise import InjectiveRule

    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
    sch = InjectiveRule().apply(_blocked_concat(size=40), target, False)
    assert sch is not None  # not left to a rule that keeps the producers apart
    assert tirx.ForKind.PARALLEL in _loop_kinds(sch.mod["main"])
    assert not scalarized_loops(sch.mod)


def test_a_padding_keeps_its_small_row_loop_in_the_parallel_loop():
    mod = _legalized(_function({"x": (1, 3, 8, 8)}, lambda x: R.nn.pad(
        x, pad_width=[0, 0, 0, 0, 1, 1, 1, 1])), scheduled=True)
    (func,) = [f for _, f in mod.functions_items() if _rule(f) == "injective"]
    assert tirx.ForKind.UNROLLED not in _loop_kinds(func)


def test_a_select_on_loaded_values_keeps_its_channel_blocks_in_the_parallel_loop():
    """``round_to_bf16``'s ``isnan(x)`` reads the block and the lane through a load: per element,
    not a piece boundary, so the channel blocks stay in the fused parallel loop."""
    from tvm import te

    from relaycomp.schedules.cpu.bf16_round import round_bits
    from relaycomp.schedules.cpu.elementwise import InjectiveRule

    x = te.placeholder((1, 6, 8, 8, 16), name="x")
    bits = te.compute(x.shape, lambda *i: round_bits(x(*i)), name="round_to_bf16")
    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
    sch = InjectiveRule().apply(te.create_prim_func([x, bits]), target, False)
    assert tirx.ForKind.UNROLLED not in _loop_kinds(sch.mod["main"])
