"""bf16 convs whose last output block is part padding, on CPUs that split 512-bit operations.

``pad_channels`` pads a 24-channel conv to a block of 32 with zero filters. On Zen 4 a ymm
``vdpbf16ps`` costs half a zmm one, so ``convert_to_bf16`` computes such a conv on blocks of 8
output channels that stop at the last real one, and reads them back into the output's blocks
with zeros in the rest (``narrowed_outputs``, ``LANES_STAGE``). Elsewhere the whole block is one
instruction per vector and stays.
"""

import re

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from test_bf16 import BF16_RTOL, _host_has_bf16
from test_bf16_blocked import _assembly, _blocked_weights, _lowered
from tvm import relax

from relaycomp.frontend.onnx_import import import_onnx
from relaycomp.passes.convert_to_bf16 import MAX_LANE_BLOCKS, narrowed_outputs
from relaycomp.schedules.cpu.int8_isa import bf16_output_lanes
from relaycomp.targets import resolve
from tests.passes.test_plan_conv_layout import _inverted_residual

PRESET, ZEN4, SAPPHIRE_RAPIDS = "x86-64-avx512-bf16", "znver4", "sapphirerapids"
_YMM_DOT = re.compile(r"^\s*vdpbf16ps\s+[^\n]*%ymm\d+\s*$", re.MULTILINE)


def _mobilenet_block() -> tvm.IRModule:
    """A MobileNetV2 block with 24 channels (padded to a block of 32) and 144 expanded (padded
    to 160)."""
    return import_onnx(_inverted_residual(channels=24, expanded=144)).mod


def _pairs(out_channels: int, used: int, block: int = 16) -> np.ndarray:
    """A blocked bf16 weight ``[O, 1, 3, 3, 4, block, 2]`` whose output channels past ``used``
    have zero filters."""
    rng = np.random.default_rng(0)
    flat = rng.standard_normal((out_channels, 1, 3, 3, 4, 2)).astype("float32")
    flat[used:] = 0
    return np.moveaxis(flat.reshape(out_channels // block, block, 1, 3, 3, 4, 2), 1, 5)


def test_the_real_output_channels_become_blocks_of_eight_in_order():
    pairs = _pairs(32, used=24)
    narrowed = narrowed_outputs(pairs, 8)
    assert narrowed.shape == (3, 1, 3, 3, 4, 8, 2)
    for channel in range(24):  # channel c: block c // 16, lane c % 16 -> block c // 8, lane c % 8
        np.testing.assert_array_equal(narrowed[channel // 8, ..., channel % 8, :],
                                      pairs[channel // 16, ..., channel % 16, :])


@pytest.mark.parametrize(("out_channels", "used", "blocks"), [
    (32, 17, 3),   # a partly used block of 8 is kept whole
    (32, 1, 1),
    (32, 25, None),  # 7 padded channels: less than a block of 8 to leave out
    (32, 32, None),
    (80, 40, None),  # 5 blocks of 8: more than one register tile holds
    (80, 32, MAX_LANE_BLOCKS),
])
def test_only_whole_padded_blocks_of_eight_are_left_out(out_channels, used, blocks):
    narrowed = narrowed_outputs(_pairs(out_channels, used), 8)
    assert (narrowed is None) if blocks is None else narrowed.shape[0] == blocks


def test_a_target_without_narrow_lanes_keeps_whole_blocks():
    assert narrowed_outputs(_pairs(32, used=24), None) is None


@pytest.mark.parametrize(("preset", "mcpu", "lanes"), [
    ("x86-64-avx512-bf16", ZEN4, 8),
    ("x86-64-avx512-bf16", SAPPHIRE_RAPIDS, None),  # full 512-bit datapath
    ("x86-64-avx512", ZEN4, None),  # bf16 instructions left out of the target
    ("x86-64-avx2", None, None),
    ("aws-graviton3", None, None),  # bfdot: 4 lanes, no wider vector to split
])
def test_narrow_lanes_are_chosen_by_the_targets_cpu(preset, mcpu, lanes):
    mattr = ("-avx512bf16",) if preset == "x86-64-avx512" else ()
    target = resolve(preset, mcpu=mcpu, mattr=mattr, num_cores=2).tvm_target()
    assert bf16_output_lanes(target) == lanes


def test_on_zen4_the_projection_conv_computes_its_24_real_channels_only():
    """The projection conv (144 -> 24, padded to 160 -> 32) takes three blocks of 8 output
    channels on Zen 4, its 72 used input pairs unchanged; the expand conv's 144 of 160 outputs
    would take 18 blocks, more than a tile holds, and stays. Sapphire Rapids keeps the block."""
    zen4, sapphire_rapids = (_blocked_weights(_mobilenet_block(), PRESET, mcpu)
                             for mcpu in (ZEN4, SAPPHIRE_RAPIDS))
    assert [3, 1, 1, 1, 72, 8, 2] in zen4, zen4
    assert [1, 1, 1, 1, 72, 32, 2] in sapphire_rapids, sapphire_rapids
    assert [shape for shape in zen4 if shape[5] == 32] == [
        shape for shape in sapphire_rapids if shape[0] == 5]


def test_zen4_assembly_takes_the_narrow_lanes_on_ymm_registers():
    zen4 = _assembly(_mobilenet_block(), PRESET, ZEN4)
    assert len(set(re.findall(r"%ymm\d+", "\n".join(_YMM_DOT.findall(zen4))))) >= 12, \
        "a register tile of ymm accumulators"
    assert not _YMM_DOT.findall(_assembly(_mobilenet_block(), PRESET, SAPPHIRE_RAPIDS))


def _run(mod: tvm.IRModule, mcpu: str, x: np.ndarray) -> np.ndarray:
    lowered, target, _ = _lowered(mod, PRESET, mcpu)
    vm = relax.VirtualMachine(tvm.compile(lowered, target, relax_pipeline=None), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.skipif(not _host_has_bf16(), reason="this CPU has no AVX-512 BF16")
@pytest.mark.parametrize("size", [14, 15], ids=["even", "odd"])
def test_narrow_lanes_compute_what_the_whole_block_does(size):
    """The same sums in the same order, lane by lane: bit-identical to the whole-block build,
    and onnxruntime's to bf16 rounding."""
    model = _inverted_residual(channels=24, expanded=144, size=size, stem=True)
    x = np.random.default_rng(3).standard_normal((1, 3, size, size)).astype("float32")
    mod = import_onnx(model).mod
    narrow, whole = _run(mod, ZEN4, x), _run(mod, SAPPHIRE_RAPIDS, x)
    np.testing.assert_array_equal(narrow, whole)
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert 0 < np.abs(narrow - expected).max() <= BF16_RTOL * np.abs(expected).max()
