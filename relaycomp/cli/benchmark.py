"""``relaycomp benchmark ART``: latency percentiles, throughput, the kernel table, memory, MACs,
bytes moved and an energy estimate (:mod:`relaycomp.runtime.benchmark`); text or ``--json``."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub) -> None:
    """``benchmark ARTIFACT [--seconds S] [--threads N] [--rpc HOST:PORT --key K] [--json]``."""
    bench = sub.add_parser("benchmark", help="latency percentiles, kernel profile, memory and "
                                             "energy estimate of a compiled artifact")
    bench.add_argument("artifact", help="a .so built by `relaycomp compile`")
    bench.add_argument("--seconds", type=float, default=5.0,
                       help="time budget of the timed runs (default 5)")
    bench.add_argument("--min-runs", type=int, default=10, help="timed runs at least (10)")
    bench.add_argument("--threads", type=int, help="CPU threads (default: the target's num-cores)")
    bench.add_argument("--inputs", help=".npz keyed by input name (default: seeded random data)")
    bench.add_argument("--model", metavar="MODEL.onnx",
                       help="the ONNX model it was compiled from, to count MACs (default: the "
                            "file its manifest names)")
    bench.add_argument("--top", type=int, default=15, help="kernels listed in the text output")
    bench.add_argument("--rpc", metavar="HOST:PORT",
                       help="time on a device registered at this TVM RPC tracker")
    bench.add_argument("--key", help="the device key at the RPC tracker")


def run_benchmark(args: argparse.Namespace) -> int:
    """Benchmark, then print the report as text or one JSON document."""
    from relaycomp.cli.run import read_inputs
    from relaycomp.runtime.benchmark import BenchmarkConfig, benchmark
    from relaycomp.runtime.local import read_artifact

    config = BenchmarkConfig(seconds=args.seconds, min_runs=args.min_runs, threads=args.threads)
    inputs = None
    if args.inputs:
        _, manifest, _ = read_artifact(args.artifact)
        inputs = read_inputs(args.inputs, manifest.inputs)
    if not args.json:
        where = f"device '{args.key}'" if args.key else "this machine"
        print(f"benchmarking {args.artifact} on {where} for {args.seconds:g} s ...",
              file=sys.stderr, flush=True)
    report = benchmark(args.artifact, config, inputs, rpc=args.rpc, key=args.key,
                       model_file=args.model)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    for line in report_lines(report, args.top):
        print(line)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def report_lines(report, top: int = 15) -> list[str]:
    """The text form of a :class:`~relaycomp.runtime.benchmark.BenchmarkReport`."""
    lat = report.latency_ms
    head = (f"{report.artifact} on {report.device} (target {report.target}): "
            f"{report.runs} runs, {report.seconds:.2f} s measured")
    latency = (f"  latency: p50 {lat['p50']:.3f} ms, p90 {lat['p90']:.3f} ms, "
               f"p99 {lat['p99']:.3f} ms (mean {lat['mean']:.3f}, min {lat['min']:.3f}, "
               f"max {lat['max']:.3f})")
    lines = [head, latency,
             f"  throughput: {report.throughput:.1f} inferences/s (one stream)"]
    if report.kernels:
        lines.append(f"  kernels ({report.profile_runs} instrumented runs; per inference):")
        lines.append(f"    {'ms':>9} {'share':>6} {'calls':>5} {'KiB':>9}  kernel")
        for kernel in report.kernels[:top]:
            size = f"{kernel.bytes / 1024:9.1f}" if kernel.bytes else f"{'-':>9}"
            lines.append(f"    {kernel.ms:9.4f} {kernel.share:6.1%} {kernel.calls:5d} {size}  "
                         f"{kernel.name}")
        if len(report.kernels) > top:
            rest = report.kernels[top:]
            lines.append(f"    {sum(k.ms for k in rest):9.4f} {sum(k.share for k in rest):6.1%}"
                         f" {sum(k.calls for k in rest):5d} {'':9}  ({len(rest)} more kernels)")
    if report.memory:
        memory = report.memory
        lines.append(f"  memory: workspace {memory['workspace_bytes'] / 1024:.1f} KiB in "
                     f"{memory['storages']} storage(s) allocated by the VM per inference "
                     f"(planned intermediates + outputs), weights "
                     f"{memory['weight_bytes'] / 1024:.1f} KiB")
    if report.bytes_moved is not None:
        macs = ", ".join(f"{count:,} {precision}" for precision, count in
                         (report.macs or {}).items()) or "not counted"
        lines.append(f"  work per inference: MACs {macs}; {report.bytes_moved / 1024:.1f} KiB "
                     f"read and written by kernels")
    if report.energy:
        energy, coefficients = report.energy, report.energy["coefficients"]
        per_mac = ", ".join(f"{v:g} {k}" for k, v in coefficients["pj_per_mac"].items())
        lines.append(f"  energy (estimate, not measured): {energy['total_uj']:.3g} uJ per "
                     f"inference = {energy['compute_uj']:.3g} uJ compute + "
                     f"{energy['memory_uj']:.3g} uJ memory"
                     + ("" if energy["macs_counted"] else " (MACs not counted)"))
        lines.append(f"    pJ/MAC {per_mac}; {coefficients['pj_per_dram_byte']:g} pJ/byte DRAM; "
                     f"from {coefficients['origin']}: {coefficients['sources'][0][:60]}...")
    return lines
