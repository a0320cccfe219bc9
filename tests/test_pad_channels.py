"""pad_channels: a conv chain whose channels do not fill the block gets zero filters and zero
biases up to it, keeps the padding through bias adds, ReLU6 and depthwise convs, and slices the
real channels back out before anything else reads them; outputs are unchanged."""

import numpy as np
import tvm
from tvm import relax

from relaycomp.rewrite.pad_channels import pad_channels, padded_width, used_inputs

RNG = np.random.default_rng(0)


def _const(*shape) -> tvm.ir.expr.Constant:
    return relax.const(RNG.standard_normal(shape).astype("float32"))


def _chain() -> tvm.IRModule:
    """conv 32->24 + bias -> ReLU6 -> depthwise 3x3 -> conv 24->32, and a max-pool that reads
    the 24-channel tensor (it must get the real channels)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 32, 6, 6), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.add(relax.op.nn.conv2d(x, _const(24, 32, 1, 1)),
                                     _const(1, 24, 1, 1)))
            r = bb.emit(relax.op.minimum(relax.op.maximum(a, relax.const(0.0)),
                                         relax.const(6.0)))
            d = bb.emit(relax.op.nn.conv2d(r, _const(24, 1, 3, 3), padding=1, groups=24))
            y = bb.emit(relax.op.nn.conv2d(d, _const(32, 24, 1, 1)))
            pooled = bb.emit(relax.op.nn.max_pool2d(r, pool_size=2, strides=2))
            out = bb.emit_output(relax.Tuple([y, pooled]))
        bb.emit_func_output(out)
    return bb.get()


def _ops(mod: tvm.IRModule) -> list[str]:
    return [binding.value.op.name.removeprefix("relax.")
            for binding in mod["main"].body.blocks[0].bindings
            if isinstance(binding.value, relax.Call)]


def _run(mod: tvm.IRModule, x: np.ndarray) -> list[np.ndarray]:
    vm = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())
    return [out.numpy() for out in vm["main"](tvm.runtime.tensor(x))]


def test_a_chain_is_padded_and_the_real_channels_leave_it():
    before = _chain()
    after = pad_channels(before, block=16)
    assert _ops(after) == ["nn.conv2d", "add", "maximum", "minimum", "nn.conv2d", "nn.conv2d",
                           "strided_slice", "nn.max_pool2d"]
    convs = [binding.value for binding in after["main"].body.blocks[0].bindings
             if isinstance(binding.value, relax.Call) and binding.value.op.name == "relax.nn.conv2d"]
    first, depthwise, last = (conv.args[1].value.numpy() for conv in convs)
    assert first.shape == (32, 32, 1, 1) and not first[24:].any()  # zero filters
    assert depthwise.shape == (32, 1, 3, 3) and int(convs[1].attrs.groups) == 32
    assert last.shape == (32, 32, 1, 1) and not last[:, 24:].any()  # zero input weights
    x = RNG.standard_normal((1, 32, 6, 6)).astype("float32")
    for got, want in zip(_run(after, x), _run(before, x)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_channels_that_fill_the_block_or_would_double_are_left_alone():
    assert padded_width(24, 16) == 32 and padded_width(144, 32) == 160
    assert padded_width(16, 32) == 16 and padded_width(32, 16) == 32
    mod = _chain()
    assert pad_channels(mod, block=8).same_as(mod)


def test_an_integer_conv_is_left_alone():
    """An int8 conv (uint8 x int8 -> int32, as lower_qdq_to_integer leaves it) is no float
    conv the layout plan takes: padding it would only add slices (and once took PP-OCRv4 det's
    int8 build down with it)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 32, 6, 6), "uint8"))
    weight = relax.const(RNG.integers(-127, 128, (24, 32, 1, 1)).astype("int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.nn.conv2d(x, weight, out_dtype="int32"))
        bb.emit_func_output(y)
    before = bb.get()
    report = {}
    assert pad_channels(before, block=16, report=report).same_as(before)
    assert report == {"padded": 0}


def test_a_conv_reads_its_inputs_up_to_the_last_with_a_nonzero_weight():
    weight = RNG.standard_normal((8, 32, 3, 3)).astype("float32")
    weight[:, 24:] = 0  # pad_channels' zero input weights
    weight[:, 5] = 0  # a zero input among the real ones is still read
    assert used_inputs(weight, axis=1) == 24
    weight[3, 30, 1, 1] = 1.0
    assert used_inputs(weight, axis=1) == 31
    assert used_inputs(np.zeros((4, 6)), axis=-1) == 1


def test_a_squeeze_excite_pool_reads_the_padded_channels():
    """A mean over rows and columns (a squeeze-excite's pool) keeps the padding: its padded
    channels' means meet the next conv's zero input weights, and no slice of the full-size
    activation is made for it (PP-OCRv4 det's 24-channel blocks once changed layout there)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 32, 6, 6), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, _const(24, 32, 1, 1))))
            pooled = bb.emit(relax.op.mean(a, axis=[2, 3], keepdims=True))
            scale = bb.emit(relax.op.sigmoid(relax.op.nn.conv2d(pooled, _const(24, 24, 1, 1))))
            y = bb.emit_output(relax.Tuple([relax.op.multiply(a, scale)]))
        bb.emit_func_output(y)
    before = bb.get()
    after = pad_channels(before, block=16)
    assert _ops(after) == ["nn.conv2d", "nn.relu", "mean", "nn.conv2d", "sigmoid", "multiply",
                           "strided_slice"]
    x = RNG.standard_normal((1, 32, 6, 6)).astype("float32")
    np.testing.assert_allclose(_run(after, x)[0], _run(before, x)[0], rtol=1e-5, atol=1e-6)
