"""The int8 matrix-vector product on AVX-512 VNNI and AVX2 (schedules/cpu/int8_gemv): a batch-1
classifier head on vpdpbusd (vpmaddwd on AVX2) with packed weights, exact against an integer
reference."""

import re

import numpy as np
import pytest
import tvm
from helpers import build_scheduled
from tvm import relax
from tvm.target import codegen

from relaycomp.targets import resolve

CASCADE_LAKE = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                  "mcpu": "cascadelake", "num-cores": 2})
AVX2 = resolve("x86-64-avx2", num_cores=2).tvm_target()  # Haswell: no AVX-512
HOST_HAS_AVX2 = bool(codegen.llvm_cpu_has_features(["avx2"], resolve("host").tvm_target()))
HOST_HAS_VNNI = bool(codegen.llvm_cpu_has_features(["avx512vnni", "avx512vl"],
                                                   resolve("host").tvm_target()))
INPUTS = 96
ZERO_POINT = 9


def _head(outputs: int):
    """x (uint8 [1, 96]) -> int8 matmul -> zero-point correction -> rescale -> float."""
    rng = np.random.default_rng(0)
    weight = rng.integers(-128, 128, (INPUTS, outputs)).astype("int8")
    correction = ZERO_POINT * weight.astype(np.int32).sum(axis=0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, INPUTS), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            acc = bb.emit(relax.op.matmul(x, relax.const(weight), out_dtype="int32"))
            acc = relax.op.subtract(acc, relax.const(correction.astype("int32")))
            y = bb.emit_output(relax.op.multiply(relax.op.astype(acc, "float32"),
                                                 relax.const(np.float32(0.5))))
        bb.emit_func_output(y)
    return bb.get(), weight


@pytest.fixture(scope="module")
def built():
    """outputs -> (weight, executable): 48 (16 lanes x 3 accumulators), 40 (8 lanes x 5)."""
    return {n: (weight, build_scheduled(mod, CASCADE_LAKE))
            for n, (mod, weight) in ((n, _head(n)) for n in (48, 40))}


@pytest.mark.parametrize(("outputs", "register"), [(48, "zmm"), (40, "ymm")])
def test_head_is_vpdpbusd_without_spills(built, outputs, register):
    asm = built[outputs][1].mod.imports[0].inspect_source("asm")
    assert re.search(rf"vpdpbusd\s+[^\n]*%{register}\d+", asm), "not tensorized"
    assert "vpmulld" not in asm  # the generic schedule's int32 multiplies
    assert "Spill" not in asm and "Reload" not in asm


@pytest.mark.skipif(not HOST_HAS_VNNI, reason="the host has no AVX-512 VNNI to run it on")
@pytest.mark.parametrize("outputs", [48, 40])
def test_head_is_exact(built, outputs):
    weight, executable = built[outputs]
    x = np.random.default_rng(1).integers(0, 256, (1, INPUTS)).astype("uint8")
    x[0, :8] = 255
    actual = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    acc = (x.astype(np.int64) - ZERO_POINT) @ weight.astype(np.int64)
    np.testing.assert_array_equal(actual, (acc * 0.5).astype(np.float32))


@pytest.fixture(scope="module")
def built_avx2():
    """(weight, executable) of a 40-output head (8 lanes x 5 accumulators) for AVX2."""
    mod, weight = _head(40)
    return weight, build_scheduled(mod, AVX2)


def test_avx2_head_is_vpmaddwd_on_ymm_without_spills(built_avx2):
    asm = built_avx2[1].mod.imports[0].inspect_source("asm")
    assert re.search(r"vpmaddwd\s+[^\n]*%ymm\d+", asm), "not tensorized"
    assert "zmm" not in asm and "vpmulld" not in asm
    assert "Spill" not in asm and "Reload" not in asm


@pytest.mark.skipif(not HOST_HAS_AVX2, reason="the host cannot run AVX2 code")
def test_avx2_head_is_exact_for_any_int8_weights(built_avx2):
    weight, executable = built_avx2  # 8-bit weights: widened to 16 bits, no pair sums
    x = np.random.default_rng(2).integers(0, 256, (1, INPUTS)).astype("uint8")
    x[0, :8] = 255
    actual = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    acc = (x.astype(np.int64) - ZERO_POINT) @ weight.astype(np.int64)
    np.testing.assert_array_equal(actual, (acc * 0.5).astype(np.float32))
