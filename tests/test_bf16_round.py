"""fp32 -> bf16 bits in a kernel (``relaycomp.schedules.cpu.bf16_round``): the integer rounding
anywhere, ``vcvtneps2bf16`` on AVX-512 BF16 targets. The instruction checks cross-compile for the
``x86-64-avx512-bf16`` preset (any CPU); the instruction's values run where the CPU has it, the
integer form's everywhere, both against numpy's rounding (``bf16_bits``)."""

import re

import numpy as np
import pytest
import tvm
from helpers import scalarized_loops
from test_bf16 import _host_has_bf16
from test_bf16_blocked import _assembly, _projection_chain
from tvm import s_tir, te

from relaycomp.passes.convert_to_bf16 import bf16_bits
from relaycomp.schedules.cpu.bf16_round import CONVERT_OP, round_bits, rounding
from relaycomp.targets import resolve

LANES = [1, 4, 8, 16, 32]


def _values() -> np.ndarray:
    """Every class of fp32: ties to even both ways, the largest finite values (rounding up to
    infinity), infinities, zeros, NaNs with payloads, and random values over all exponents."""
    special = np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000,
                        0xFF800000, 0x00000000, 0x80000000, 0x7FC00000, 0xFFC12345, 0x7F800001],
                       np.uint32).view(np.float32)
    rng = np.random.default_rng(0)
    count = 1024 - len(special)
    scales = np.float32(2) ** rng.integers(-120, 120, count).astype(np.float32)
    return np.concatenate([special, rng.standard_normal(count).astype(np.float32) * scales])


def _rounding_kernel(round_value, lanes: int) -> tvm.IRModule:
    """``y[i] = round_value(x[i])`` over 1024 values, vectorized ``lanes`` wide."""
    x = te.placeholder((1024,), "float32", name="x")
    y = te.compute(x.shape, lambda i: round_value(x(i)), name="y")
    sch = s_tir.Schedule(te.create_prim_func([x, y]))
    if lanes > 1:
        (loop,) = sch.get_loops(sch.get_sblock("y"))
        sch.vectorize(sch.split(loop, [None, lanes])[1])
    return sch.mod


def _target(preset: str) -> tvm.target.Target:
    return resolve(preset, num_cores=2).tvm_target()


def _run(mod: tvm.IRModule, target: tvm.target.Target, values: np.ndarray) -> np.ndarray:
    library = tvm.tirx.build(mod, target=target)
    device = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(values.shape, np.uint16), device)
    library(tvm.runtime.tensor(values, device), out)
    return out.numpy()


def _assert_rounded(bits: np.ndarray, values: np.ndarray, flushes_denormals: bool) -> None:
    nan = np.isnan(values)
    exponent, mantissa = bits & 0x7F80, bits & 0x7F
    assert ((exponent == 0x7F80) & (mantissa != 0))[nan].all(), "a NaN lost"
    expected = values if not flushes_denormals else np.where(
        np.abs(values) < np.finfo(np.float32).tiny, np.copysign(0, values), values)
    assert (bits == bf16_bits(expected))[~nan].all()


def test_the_instruction_is_used_only_where_the_target_has_it():
    assert rounding(_target("x86-64-avx512-bf16")) is not round_bits
    for preset in ("x86-64-avx512", "x86-64-avx2", "aws-graviton3", "cortex-a76"):
        assert rounding(_target(preset)) is round_bits, preset


@pytest.mark.parametrize("lanes", LANES)
def test_integer_rounding_matches_numpy_on_every_class_of_value(lanes):
    values = _values()
    bits = _run(_rounding_kernel(round_bits, lanes), _target("host"), values)
    _assert_rounded(bits, values, flushes_denormals=False)


def test_integer_rounding_of_a_vector_value_matches_numpy():
    """``round_bits`` on a 16-lane value, as ``LowerIntrin`` hands it a vectorized call it has
    no instruction for (4 lanes, a non-LLVM target): vector constants, a vector NaN test."""
    x = tvm.tirx.decl_buffer((1024,), "float32", name="x")
    y = tvm.tirx.decl_buffer((1024,), "uint16", name="y")
    i = tvm.tirx.Var("i", "int32")
    lanes = tvm.tirx.Ramp(i * 16, 1, 16)
    body = tvm.tirx.For(i, 0, 64, tvm.tirx.ForKind.SERIAL, tvm.tirx.BufferStore(
        y, round_bits(tvm.tirx.BufferLoad(x, [lanes])), [lanes]))
    func = tvm.tirx.PrimFunc([x, y], body).with_attr("global_symbol", "main")
    values = _values()
    bits = _run(tvm.IRModule({"main": func}), _target("host"), values)
    _assert_rounded(bits, values, flushes_denormals=False)


@pytest.mark.parametrize("lanes", LANES)
def test_avx512_bf16_rounding_is_one_instruction_a_vector_and_stays_vector(lanes):
    """8 and 16 lanes: one ``vcvtneps2bf16`` (ymm, zmm) each; 32: two of 16; a scalar and 4
    lanes: the integer rounding. No lane is scalarized."""
    target = _target("x86-64-avx512-bf16")
    mod = _rounding_kernel(rounding(target), lanes)
    assert not scalarized_loops(mod)
    asm = tvm.tirx.build(mod, target=target).inspect_source("asm")
    conversions = re.findall(r"^\s*vcvtneps2bf16[xyz]?\s+[^\n]*%(ymm|xmm)\d+\s*$", asm, re.MULTILINE)
    if lanes >= 8:
        assert conversions, asm
        assert "vpsrld" not in asm, "integer rounding left beside the instruction"
    else:
        assert not conversions


@pytest.mark.parametrize("lanes", [16, 32])
def test_avx512_bf16_rounding_builds_beside_a_select(lanes):
    """A rounded input padded with zero channels (``round_to_bf16`` of an odd channel count) puts
    the conversion in one arm of a select: its lanes must reach the select as ``i16``, not as
    the instruction's ``bfloat`` (LLVM's verifier refuses the mix)."""
    target = _target("x86-64-avx512-bf16")
    round_value = rounding(target)
    x = te.placeholder((3, 64), "float32", name="x")
    y = te.compute((4, 64), lambda c, i: tvm.tirx.if_then_else(
        c < 3, round_value(x(tvm.te.min(c, 2), i)), tvm.tirx.const(0, "uint16")), name="y")
    sch = s_tir.Schedule(te.create_prim_func([x, y]))
    _, loop = sch.get_loops(sch.get_sblock("y"))
    sch.vectorize(sch.split(loop, [None, lanes])[1])
    assert "vcvtneps2bf16" in tvm.tirx.build(sch.mod, target=target).inspect_source("asm")


@pytest.mark.skipif(not _host_has_bf16(), reason="this CPU has no AVX-512 BF16")
@pytest.mark.parametrize("lanes", LANES)
def test_avx512_bf16_rounding_matches_numpy_but_flushes_denormals(lanes):
    values = _values()
    values[-4:] = np.array([1e-39, -3e-40, 1.1e-38, -1.17e-38], np.float32)
    target = _target("host")
    bits = _run(_rounding_kernel(rounding(target), lanes), target, values)
    _assert_rounded(bits, values, flushes_denormals=lanes >= 8)


def test_the_op_prints_by_its_name():
    mod = _rounding_kernel(rounding(_target("x86-64-avx512-bf16")), 16)
    assert CONVERT_OP.removeprefix("tirx.") in mod.script()


def test_a_blocked_bf16_conv_rounds_its_outputs_with_the_instruction():
    """The projection conv's epilogue (``round_to_bf16`` fused into its write-back) converts
    sixteen sums with ``vcvtneps2bf16`` where it once added, shifted and narrowed them."""
    asm = _assembly(_projection_chain(), "x86-64-avx512-bf16")
    assert re.search(r"^\s*vcvtneps2bf16\s+%zmm\d+, %ymm\d+", asm, re.MULTILINE), asm
