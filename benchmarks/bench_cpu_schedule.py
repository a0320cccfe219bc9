"""Latency of the untuned CPU schedule (``schedule_cpu_loops``) against stock TVM and onnxruntime.

Builds two small ONNX models in-process (random weights), imports them with TVM's Relax ONNX
frontend and times four builds side by side, all on the same number of threads:

- ``stock``:     ``tvm.compile(mod, target)`` (the default Relax pipeline, nothing scheduled);
- ``fused``:     the cpu_generic pipeline (LegalizeOps … FuseTIR), still unscheduled;
- ``scheduled``: the cpu_generic pipeline with ``schedule_cpu_loops`` right after FuseTIR;
- ``sched+bn``:  the same after relaycomp's "simplify" stage (DecomposeOpsForInference,
  CanonicalizeBindings, FoldConstant): BatchNorm and Clip then fuse into the conv epilogue;
- ``ort``:       onnxruntime with ``intra_op_num_threads`` = threads.

Prints median latencies and their ratio to onnxruntime. Run::

    TVM_NUM_THREADS=2 python benchmarks/bench_cpu_schedule.py --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _GraphBuilder:
    """Accumulates ONNX nodes and random initializers; names are generated."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, kind: str) -> str:
        self._count += 1
        return f"{kind}_{self._count}"

    def _weight(self, shape: tuple[int, ...], scale: float, offset: float = 0.0) -> str:
        name = self._name("w")
        value = (self.rng.standard_normal(shape) * scale + offset).astype(np.float32)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv_bn(self, x: str, cin: int, cout: int, kernel: int, stride: int = 1, group: int = 1):
        """Conv (no bias) followed by inference BatchNormalization."""
        fan_in = cin // group * kernel * kernel
        w = self._weight((cout, cin // group, kernel, kernel), (2.0 / fan_in) ** 0.5)
        pad = kernel // 2
        y = self.node("Conv", [x, w], kernel_shape=[kernel, kernel], strides=[stride, stride],
                      pads=[pad] * 4, group=group)
        bn = [self._weight((cout,), 0.1, 1.0), self._weight((cout,), 0.1),
              self._weight((cout,), 0.1), self._weight((cout,), 0.0, 1.0)]
        return self.node("BatchNormalization", [y, *bn], epsilon=1e-5)

    def head(self, x: str, channels: int, classes: int) -> str:
        """Global average pool, flatten and a Gemm classifier."""
        pooled = self.node("Flatten", [self.node("GlobalAveragePool", [x])])
        w = self._weight((classes, channels), channels**-0.5)
        return self.node("Gemm", [pooled, w, self._weight((classes,), 0.01)], transB=1)

    def model(self, x_shape: list[int], out: str, out_shape: list[int]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "bench",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        onnx.checker.check_model(model)
        return model


def resnet_style() -> onnx.ModelProto:
    """ResNet-18-like: 7x7 stem, max pool, two 64-ch basic blocks, a strided 128-ch block."""
    g = _GraphBuilder(seed=0)
    x = g.node("Relu", [g.conv_bn("x", 3, 64, 7, stride=2)])
    x = g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    for _ in range(2):
        y = g.node("Relu", [g.conv_bn(x, 64, 64, 3)])
        x = g.node("Relu", [g.node("Add", [g.conv_bn(y, 64, 64, 3), x])])
    y = g.node("Relu", [g.conv_bn(x, 64, 128, 3, stride=2)])
    shortcut = g.conv_bn(x, 64, 128, 1, stride=2)
    x = g.node("Relu", [g.node("Add", [g.conv_bn(y, 128, 128, 3), shortcut])])
    return g.model([1, 3, 224, 224], g.head(x, 128, 1000), [1, 1000])


def mobilenet_v2_style() -> onnx.ModelProto:
    """MobileNetV2-like: 3x3 stem, inverted residual blocks (1x1 expand, 3x3 dw, 1x1 project)."""
    g = _GraphBuilder(seed=1)

    def relu6(v: str) -> str:
        return g.node("Clip", [v, g._weight((), 0.0, 0.0), g._weight((), 0.0, 6.0)])

    x = relu6(g.conv_bn("x", 3, 32, 3, stride=2))
    blocks = [(32, 16, 1, 1), (16, 24, 6, 2), (24, 24, 6, 1), (24, 32, 6, 2), (32, 32, 6, 1)]
    for cin, cout, expand, stride in blocks:
        hidden = cin * expand
        y = relu6(g.conv_bn(x, cin, hidden, 1)) if expand != 1 else x
        y = relu6(g.conv_bn(y, hidden, hidden, 3, stride=stride, group=hidden))
        y = g.conv_bn(y, hidden, cout, 1)
        x = g.node("Add", [x, y]) if stride == 1 and cin == cout else y
    x = relu6(g.conv_bn(x, 32, 1280, 1))
    return g.model([1, 3, 224, 224], g.head(x, 1280, 1000), [1, 1000])


def _time_in_blocks(runs: dict, repeat: int, slow: set[str], block: int = 5) -> dict:
    """Median ms per runner over ``repeat`` timed runs (three for ``slow`` runners).

    Runners take turns in blocks of ``block`` back-to-back runs, so that load from other processes
    on the machine hits every backend alike; each block starts with one untimed run. Alternating
    single runs would not do: onnxruntime's and TVM's pool threads keep spinning after a run and
    slow down whichever backend runs next, and after an idle pause the first runs are slow too.
    """
    samples: dict[str, list[float]] = {label: [] for label in runs}
    while any(len(samples[label]) < (3 if label in slow else repeat) for label in runs):
        for label, run in runs.items():
            wanted = (3 if label in slow else repeat) - len(samples[label])
            if wanted <= 0:
                continue
            run()
            for _ in range(min(block, wanted)):
                start = time.perf_counter()
                run()
                samples[label].append((time.perf_counter() - start) * 1e3)
    return {label: statistics.median(times) for label, times in samples.items()}


def _tvm_runner(model: onnx.ModelProto, target, pipeline):
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(model, shape_dict={"x": [1, 3, 224, 224]}, keep_params_in_input=False)
    start = time.perf_counter()
    if pipeline is None:
        executable = tvm.compile(mod, target)
    else:
        executable = tvm.compile(mod, target, relax_pipeline=pipeline)
    build_s = time.perf_counter() - start
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm, build_s


def _pipelines(target):
    """The cpu_generic pipeline, without (fused) and with (scheduled) the schedule pass."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from relaycomp.passes.schedule_cpu_loops import schedule_cpu_loops, schedule_report

    @tvm.transform.module_pass(opt_level=0, name="print_schedule_report")
    def print_report(mod, _ctx):
        print(f"    schedule report: {schedule_report(mod)}", file=sys.stderr)
        return mod

    def build(extra, graph=()):
        @tvm.transform.module_pass(opt_level=0, name="bench_cpu_pipeline")
        def _pipeline(mod, _ctx):
            with target:
                passes = (list(graph) + cpu.library_dispatch_passes(target)
                          + cpu.legalize_passes(target) + extra
                          + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))
                return tvm.transform.Sequential(passes)(mod)

        return _pipeline

    # "+bn": the project pipeline's "simplify" stage first: inference BatchNorm decomposed into
    # elementwise ops, so that it fuses into the conv epilogue instead of running on its own.
    decompose_bn = [relax.transform.DecomposeOpsForInference(),
                    relax.transform.CanonicalizeBindings(), relax.transform.FoldConstant()]
    return {
        "fused": build([]),
        "scheduled": build([schedule_cpu_loops(target), print_report]),
        "sched+bn": build([schedule_cpu_loops(target), print_report], decompose_bn),
    }


def bench(name: str, model: onnx.ModelProto, threads: int, repeat: int, skip_stock: bool) -> None:
    """Time one model on every backend and print a table of medians and ratios."""
    import onnxruntime as ort
    import tvm
    from tvm.target import codegen

    target = tvm.target.Target(
        {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": threads}
    )
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    (reference,) = session.run(None, {"x": x})
    runs = {"ort": lambda: session.run(None, {"x": x})}

    builds = {} if skip_stock else {"stock": None}
    builds.update(_pipelines(target))
    data = tvm.runtime.tensor(x)
    for label, pipeline in builds.items():
        vm, build_s = _tvm_runner(model, target, pipeline)
        error = float(np.max(np.abs(vm["main"](data).numpy() - reference)))
        runs[label] = lambda vm=vm: vm["main"](data)
        print(f"  {label:<10} built in {build_s:5.1f} s, max |tvm - ort| = {error:.2e}",
              file=sys.stderr)

    medians = _time_in_blocks(runs, repeat, slow={"stock", "fused"})
    print(f"{name}: median latency, {threads} threads ({repeat} runs in alternating blocks;"
          " stock/fused: 3)")
    for label, ms in medians.items():
        print(f"  {label:<10} {ms:9.2f} ms   {ms / medians['ort']:7.2f}x onnxruntime")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: ``--threads``, ``--repeat``, ``--model``, ``--skip-stock``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--model", choices=["resnet", "mobilenet", "all"], default="all")
    parser.add_argument("--skip-stock", action="store_true", help="skip the slow stock build")
    args = parser.parse_args(argv)
    if os.environ.get("TVM_NUM_THREADS") != str(args.threads):
        # The TVM thread pool reads TVM_NUM_THREADS once, when the runtime starts: re-exec.
        os.environ["TVM_NUM_THREADS"] = str(args.threads)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    models = {"resnet": resnet_style, "mobilenet": mobilenet_v2_style}
    for key, builder in models.items():
        if args.model in (key, "all"):
            bench(f"{key}-style 1x3x224x224", builder(), args.threads, args.repeat,
                  args.skip_stock)


if __name__ == "__main__":
    main()
