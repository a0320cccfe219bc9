"""schedule_gpu_default: every unscheduled kernel gets dlight's GPU schedule, bound to threads.

No GPU is needed: the pass only reads the CUDA target it is given (thread limits).
"""

import tvm
import tvm_ffi
from tvm import tirx
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from relaycomp.passes import schedule_gpu_default as pass_module
from relaycomp.registry import PASSES

CUDA = tvm.target.Target({"kind": "cuda", "arch": "sm_80", "max_num_threads": 1024})


def schedule(mod):
    return pass_module.schedule_gpu_default(CUDA)(mod)


def thread_extents(func: tirx.PrimFunc) -> dict[str, int]:
    """Thread tag -> extent of every loop bound to a GPU thread axis."""
    loops: list = []
    tvm_ffi.structural_walk(func.body, (tirx.For, loops.append))
    return {loop.thread_binding.thread_tag: int(loop.extent) for loop in loops
            if loop.kind == tirx.ForKind.THREAD_BINDING}


def test_the_pass_is_for_cuda_targets_only():
    assert PASSES.get("schedule_gpu_default").kinds == ("cuda",)


def test_an_elementwise_kernel_is_spread_over_blocks_of_threads():
    # Modules are built in each test: dlight's pass writes its schedules into the module it gets.
    @I.ir_module
    class Before:
        @T.prim_func(private=True, s_tir=True)
        def add_one(a: T.Buffer((64,), "float32"), b: T.Buffer((64,), "float32")):
            T.func_attr({"tirx.noalias": True})
            for i in range(64):
                with T.sblock("b"):
                    vi = T.axis.spatial(64, i)
                    b[vi] = a[vi] + T.float32(1)

        @R.function
        def main(x: R.Tensor((64,), "float32")) -> R.Tensor((64,), "float32"):
            cls = Before
            with R.dataflow():
                y = R.call_tir(cls.add_one, (x,), out_ty=R.Tensor((64,), "float32"))
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @T.prim_func(private=True, s_tir=True)
        def add_one(a: T.Buffer((64,), "float32"), b: T.Buffer((64,), "float32")):
            T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
            for i_0 in T.thread_binding(1, thread="blockIdx.x"):
                for i_1 in T.thread_binding(1024, thread="threadIdx.x"):
                    with T.sblock("b"):
                        vi = T.axis.spatial(64, i_0 * 1024 + i_1)
                        T.where(i_0 * 1024 + i_1 < 64)
                        b[vi] = a[vi] + T.float32(1)

        @R.function
        def main(x: R.Tensor((64,), "float32")) -> R.Tensor((64,), "float32"):
            cls = Expected
            with R.dataflow():
                y = R.call_tir(cls.add_one, (x,), out_ty=R.Tensor((64,), "float32"))
                R.output(y)
            return y

    tvm.ir.assert_structural_equal(schedule(Before), Expected)


def test_a_row_reduction_gives_each_row_a_block_and_reduces_across_its_threads():
    @I.ir_module
    class Before:
        @T.prim_func(private=True, s_tir=True)
        def row_sum(a: T.Buffer((4, 256), "float32"), b: T.Buffer((4,), "float32")):
            T.func_attr({"tirx.noalias": True})
            for i, k in T.grid(4, 256):
                with T.sblock("b"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    with T.init():
                        b[vi] = T.float32(0)
                    b[vi] = b[vi] + a[vi, vk]

    kernel = schedule(Before)["row_sum"]
    assert kernel.attrs["tirx.is_scheduled"]
    assert thread_extents(kernel) == {"blockIdx.x": 4, "threadIdx.x": 256}


def test_a_scheduled_kernel_is_left_alone():
    # Compared with a copy, not with Before: a pass that scheduled Before in place would also
    # change what it is compared with.
    @I.ir_module
    class Before:
        @T.prim_func(private=True, s_tir=True)
        def add_one(a: T.Buffer((64,), "float32"), b: T.Buffer((64,), "float32")):
            T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
            for i in range(64):
                with T.sblock("b"):
                    vi = T.axis.spatial(64, i)
                    b[vi] = a[vi] + T.float32(1)

    @I.ir_module
    class Expected:
        @T.prim_func(private=True, s_tir=True)
        def add_one(a: T.Buffer((64,), "float32"), b: T.Buffer((64,), "float32")):
            T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
            for i in range(64):
                with T.sblock("b"):
                    vi = T.axis.spatial(64, i)
                    b[vi] = a[vi] + T.float32(1)

    tvm.ir.assert_structural_equal(schedule(Before), Expected)
