"""fp32 conv kernels follow the target's ISA, checked in the cross-compiled assembly of their
innermost loop: 512-bit registers and a tile of 14 accumulators on AVX-512 (of its 32
registers), 256-bit ones and 8 on AVX2 (of 16), and nothing spilled to the stack on either."""

import re

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu

from relaycomp.passes.schedule_cpu_loops import schedule_cpu_loops
from relaycomp.targets import resolve


def _conv(channels: int = 64, size: int = 28):
    """A ResNet-style 3x3 conv + bias + relu, ``channels`` in and out, ``size`` x ``size``."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((channels, channels, 3, 3)).astype("float32")
    bias = rng.standard_normal((1, channels, 1, 1)).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, channels, size, size), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = relax.op.nn.conv2d(x, relax.const(weight), padding=1)
            y = bb.emit_output(relax.op.nn.relu(relax.op.add(y, relax.const(bias))))
        bb.emit_func_output(y)
    return bb.get()


def _hot_loop(asm: str) -> str:
    """The basic block with the most FMAs, up to its branch: the conv's innermost loop."""
    blocks = re.split(r"^\.LBB\d+_\d+:", asm, flags=re.MULTILINE)
    block = max(blocks, key=lambda text: text.count("vfmadd"))
    branch = re.search(r"^\s+j\w+\s", block, flags=re.MULTILINE)
    return block[:branch.end()] if branch else block


def _assembly(preset: str) -> str:
    target = resolve(preset, num_cores=2).tvm_target()
    with target:
        mod = tvm.transform.Sequential(
            cpu.legalize_passes(target) + [relax.transform.FuseOps(), relax.transform.FuseTIR(),
                                           schedule_cpu_loops(target)]
            + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))(_conv())
    library = tvm.compile(mod, target, relax_pipeline=None).mod.imports[0]
    return _hot_loop(library.inspect_source("asm"))


def _fma_accumulators(asm: str, register: str) -> set[str]:
    """The registers that packed single-precision FMAs accumulate into."""
    return set(re.findall(rf"vfmadd231ps\s+[^\n]*%({register}\d+)\s*$", asm, re.MULTILINE))


def _spills(asm: str, register: str) -> list[str]:
    """Vector registers stored to or reloaded from the stack frame."""
    return re.findall(rf"vmov\w*\s+[^\n]*%{register}\d+[^\n]*\(%rsp\)"
                      rf"|vmov\w*\s+[^\n]*\(%rsp\)[^\n]*%{register}\d+", asm)


@pytest.mark.parametrize(("preset", "register", "accumulators"),
                         [("x86-64-avx512", "zmm", 14), ("x86-64-avx2", "ymm", 8)])
def test_conv_tiles_follow_the_vector_registers_of_the_target(preset, register, accumulators):
    asm = _assembly(preset)
    found = _fma_accumulators(asm, register)
    assert len(found) >= accumulators, f"{preset}: FMAs accumulate in {sorted(found)}"
    assert not _spills(asm, register), f"{preset} spills vector registers"
    if register == "ymm":
        assert "zmm" not in asm, "AVX2 code must not use AVX-512 registers"
