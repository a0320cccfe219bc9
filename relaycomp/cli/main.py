"""The ``relaycomp`` command line: compile, run, benchmark, inspect, targets, passes, demo, and each
registered feature's commands and ``compile`` options.

A feature's command-line part is the module its :class:`relaycomp.compiler.features.Feature`
names in ``cli``, with four functions: ``add_commands(sub) -> {name: handler}`` (its own
sub-commands), ``add_compile_options(parser)``, ``compile_config(args)`` (its config for
``compile``, or None when not asked for) and ``print_summary(report)`` (lines under the compile
summary, from its manifest report); optionally ``after_compile(args, report)`` (files it writes
from its report, e.g. a plot). The last four may be absent for a feature without a pass.

User mistakes print one ``relaycomp: error:`` line (plus a ``hint:``) on stderr and exit 1
(warnings: one ``relaycomp: warning:`` line each, :mod:`relaycomp.cli.messages`); ``--debug`` (before
or after the command) shows the traceback instead. Anything else is reported as an internal error
(exit 70). Commands that report take ``--json``: one JSON document on stdout and nothing else
there (notes, warnings and progress go to stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import traceback
import warnings
from pathlib import Path

from relaycomp.bundle import cli as bundle_cli
from relaycomp.cli import targets as targets_cli
from relaycomp.cli.benchmark import add_parser as add_benchmark_parser
from relaycomp.cli.device import add_emulate_parser, add_remote_options
from relaycomp.cli.messages import show_python_warning
from relaycomp.cli.run import signature
from relaycomp.cli.signals import sigterm_interrupts
from relaycomp.errors import RelaycompError
from relaycomp.frontend.onnx_import import parse_input_specs

EXIT_USER_ERROR, EXIT_INTERNAL, EXIT_INTERRUPTED = 1, 70, 130


def _add_shape_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", action="append", default=[], metavar="NAME:DIMS",
                        help="pin an input's shape, e.g. x:1,3,224,224; sr: for a scalar, 0 "
                             "for an empty dim (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one sub-command per task)."""
    parser = argparse.ArgumentParser(
        prog="relaycomp", description="ONNX in, optimized deployable library out (Apache TVM).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=targets_cli.version_line())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    compile_ = sub.add_parser("compile", help="compile an ONNX model into a library")
    compile_.add_argument("model", help="ONNX file, or example:NAME for a bundled model")
    compile_.add_argument("-o", "--output", help="artifact: *.so (default: MODEL.so) or *.tar")
    compile_.add_argument("--target", default="host", help=targets_cli.TARGET_HELP)
    compile_.add_argument("--mcpu", help="override the target CPU (e.g. cortex-a72)")
    compile_.add_argument("--mattr", help=targets_cli.MATTR_HELP)
    compile_.add_argument("--arch", help="CUDA architecture, e.g. sm_80")
    compile_.add_argument("--num-cores", type=int, help="threads the library will use")
    _add_shape_options(compile_)
    compile_.add_argument("--calib", metavar="DATA",
                          help="calibration data: .npz keyed by input name, a folder of "
                               "NAME.npy, or example:NAME")
    compile_.add_argument("--eval", metavar="DATA",
                          help="held-out data (+ 'labels') for accuracy checks (default: --calib)")
    commands = {}
    for part in feature_clis():
        if hasattr(part, "add_compile_options"):
            part.add_compile_options(compile_)
        commands.update(part.add_commands(sub))
    compile_.add_argument("--pass", dest="passes", action="append", default=[],
                          metavar="SOURCE:NAME[@STAGE]",
                          help="add a pass: file.py:name, module:name or a registered name; "
                               "@STAGE, @before:STAGE or @after:STAGE places it (repeatable)")
    compile_.add_argument("--dump-ir", metavar="DIR", help="write the IR after every pass here")
    compile_.add_argument("--time-passes", action="store_true", help="print time per pass")
    bundle_cli.add_compile_options(compile_)
    commands.update(bundle_cli.add_commands(sub))

    run = sub.add_parser("run", help="run a compiled artifact on this machine")
    run.add_argument("artifact", help="a .so built by `relaycomp compile`")
    run.add_argument("--inputs", help=".npz keyed by input name (default: seeded random data)")
    run.add_argument("--outputs", help="write outputs to this .npz, keyed by ONNX output name")
    run.add_argument("--check", metavar="MODEL", help="compare with the ONNX model's reference run")
    run.add_argument("--repeat", type=int, default=0, help="also time N runs")
    run.add_argument("--threads", type=int, help="CPU threads (default: the target's num-cores)")
    run.add_argument("--rtol", type=float,
                     help="--check tolerance relative to the largest reference value (default "
                          "1e-3; 0.1 for int8 builds, compared with the float model)")
    run.add_argument("--atol", type=float, help="--check absolute tolerance (default 0)")
    add_remote_options(run)

    inspect = sub.add_parser("inspect", help="ops, shapes, params, MACs, unsupported ops")
    inspect.add_argument("model", help="ONNX file, or example:NAME")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    _add_shape_options(inspect)

    add_emulate_parser(sub)
    sub.add_parser("targets", help="list known target triples and board presets (yours too)")
    add_benchmark_parser(sub)
    passes = sub.add_parser("passes", help="list the pipeline's stages and passes")
    passes.add_argument("--target", default="host", help="whose pipeline to show")
    sub.add_parser("demo", help="compile and run the bundled digits example end to end")
    _add_common_options(sub)
    parser.set_defaults(feature_commands=commands)
    return parser


# Commands whose output is a report: each takes --json (a feature command may already have it).
JSON_COMMANDS = ("compile", "run", "inspect", "targets", "passes", "benchmark", "tune", "prune",
                 "distill", "package", "quantize")


def _add_common_options(sub) -> None:
    """``--debug`` after any command too; ``--json`` on every reporting command."""
    for name, command in sub.choices.items():
        with contextlib.suppress(argparse.ArgumentError):  # the command has it already
            # SUPPRESS: not given after the command keeps the value given before it
            command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help="show tracebacks on errors")
        if name in JSON_COMMANDS:
            with contextlib.suppress(argparse.ArgumentError):
                command.add_argument("--json", action="store_true",
                                     help="print one JSON document on stdout (nothing else)")


def feature_clis() -> list:
    """The command-line parts of the registered features, in registration order."""
    from relaycomp.compiler.features import FEATURES

    return [importlib.import_module(FEATURES.get(name).cli) for name in FEATURES
            if FEATURES.get(name).cli]


def cmd_compile(args) -> int:
    """``relaycomp compile``."""
    from relaycomp.compiler.build import CompileConfig, compile_model

    output = args.output or f"{Path(args.model.removeprefix('example:')).stem}.so"
    target = targets_cli.with_mattr(args.target, args.mattr)
    if args.passes:  # `--pass mypkg.passes:fn` finds mypkg here, as `python -m` would
        targets_cli.add_working_folder_to_path()
    if args.dump_ir:
        _check_dump_folder(Path(args.dump_ir))
    bundle_cli.check_compile_options(args)
    from relaycomp.compiler.plugins import load_pass_spec

    parts = [p for p in feature_clis() if hasattr(p, "compile_config")]
    features = tuple(c for c in (p.compile_config(args) for p in parts) if c is not None)
    config = CompileConfig(target=target, input_shapes=parse_input_specs(args.input),
                           mcpu=args.mcpu, arch=args.arch, num_cores=args.num_cores,
                           features=features, calibration=args.calib, evaluation=args.eval,
                           extra_passes=tuple(load_pass_spec(spec) for spec in args.passes),
                           dump_ir=Path(args.dump_ir) if args.dump_ir else None)
    if args.json:  # the features' and the compiler's own lines go to stderr
        with contextlib.redirect_stdout(sys.stderr):
            artifact = compile_model(args.model, output, config)
            bundle = bundle_cli.after_compile(args, artifact)
            _after_compile_hooks(args, config, artifact.manifest)
        document = compile_json(artifact)
        if bundle is not None:
            document["bundle"] = bundle
        print(json.dumps(document, indent=2))
        return 0
    artifact = compile_model(args.model, output, config)
    manifest = artifact.manifest
    for note in manifest.report["import"]["notes"]:
        print(f"note: {note}", file=sys.stderr)
    seconds = sum(r.seconds for r in artifact.pipeline.records)
    print(f"compiled {args.model} for {manifest.target['name']} ({manifest.target['triple']}) "
          f"-> {artifact.path}")
    print(f"  inputs:  {signature(manifest.inputs)}")
    print(f"  outputs: {signature(manifest.outputs)}")
    print(f"  {len(manifest.passes)} passes in {seconds:.1f} s, "
          f"{manifest.report['kernels']} kernels")
    from relaycomp.compiler.features import feature_of

    for feature_config in config.features:  # in the order the features ran
        feature = feature_of(feature_config)
        part = importlib.import_module(feature.cli) if feature.cli else None
        if part is not None and hasattr(part, "print_summary"):
            part.print_summary(manifest.report[feature.name])
    _after_compile_hooks(args, config, manifest)
    fusion = manifest.report.get("fusion")
    if fusion:
        print(f"  fusion: {fusion['kernels_before']} -> {fusion['kernels_after']} kernels, "
              f"intermediate tensors {fusion['intermediate_bytes_before'] / 1024:.1f} -> "
              f"{fusion['intermediate_bytes_after'] / 1024:.1f} KiB")
    layout = manifest.report.get("layout")
    if layout:
        print(f"  layout: {_layout_line(layout)}")
    if args.time_passes:
        print_pass_times(artifact.pipeline)
    bundle_cli.after_compile(args, artifact)
    return 0


def _layout_line(layout: dict) -> str:
    """``plan_conv_layout``'s report in a few words."""
    parts = []
    if layout.get("int8_planned"):
        parts.append(f"{layout['int8_planned']} int8 convs on NCHW16c, "
                     f"{layout['int8_layout_changes']} layout change(s)")
    if layout.get("planned"):
        padded = f", {layout['padded']} padded to the block" if layout.get("padded") else ""
        parts.append(f"{layout['planned']} convs on NCHW{layout['block']}c, "
                     f"{layout['layout_changes']} layout change(s){padded}")
    return "; ".join(parts) or f"NCHW kept ({layout.get('skipped', 'nothing planned')})"


def _after_compile_hooks(args, config, manifest) -> None:
    """Each feature's ``after_compile(args, report)``, in the order the features ran."""
    from relaycomp.compiler.features import feature_of

    for feature_config in config.features:
        feature = feature_of(feature_config)
        part = importlib.import_module(feature.cli) if feature.cli else None
        if part is not None and hasattr(part, "after_compile"):
            part.after_compile(args, manifest.report.get(feature.name, {}))


def compile_json(artifact) -> dict:
    """``compile --json``: the artifact, its target and signature, and the manifest's report."""
    manifest = artifact.manifest
    return {"artifact": str(artifact.path), "target": manifest.target,
            "inputs": [s.to_json() for s in manifest.inputs],
            "outputs": [s.to_json() for s in manifest.outputs],
            "passes": list(manifest.passes),
            "seconds": sum(r.seconds for r in artifact.pipeline.records),
            "report": manifest.report}


def _check_dump_folder(folder: Path) -> None:
    """``--dump-ir DIR`` must be a folder or creatable as one: checked before compiling."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise RelaycompError(f"--dump-ir {folder}: {existing} is a file, not a folder",
                             hint="name a folder (it is created if missing)")
    if not os.access(existing, os.W_OK):
        raise RelaycompError(f"--dump-ir {folder}: cannot write in {existing}: "
                             "permission denied")


def print_pass_times(report) -> None:
    """One line per pass: stage, name, milliseconds and the Relax ops it changed."""
    print(f"  {'stage':10} {'pass':32} {'ms':>9}  ops changed")
    for record in report.records:
        changed = ", ".join(f"{op} {delta:+d}" for op, delta in record.ops_changed.items())
        print(f"  {record.stage:10} {record.name:32} {record.seconds * 1e3:9.2f}  {changed}")


def cmd_inspect(args) -> int:
    """``relaycomp inspect``."""
    from relaycomp.frontend.examples import resolve_model_path
    from relaycomp.frontend.model_info import model_info
    from relaycomp.frontend.onnx_import import load_onnx

    info = model_info(load_onnx(resolve_model_path(args.model)), parse_input_specs(args.input))
    if args.json:
        print(json.dumps(info.to_json(), indent=2))
        return 0
    print(f"opset {info.opset}; inputs: {signature(info.inputs)}; outputs: {info.outputs}")
    print(f"params: {info.params:,} ({info.param_bytes / 2**20:.2f} MiB); "
          f"MACs: {info.macs:,} at these input shapes")
    print("ops: " + ", ".join(f"{op} x{n}" for op, n in info.op_counts.items()))
    if info.unsupported:
        print("unsupported: " + "; ".join(info.unsupported))
        return EXIT_USER_ERROR
    print("unsupported: none")
    return 0


def cmd_targets(args) -> int:
    """``relaycomp targets``: bundled targets, then the user's presets."""
    return targets_cli.list_targets(args)


def cmd_passes(args) -> int:
    """``relaycomp passes``."""
    from relaycomp.cli.passes import list_passes

    return list_passes(args)


def cmd_demo(args) -> int:
    """``relaycomp demo``: the bundled digits CNN, compiled for this machine and checked."""
    from relaycomp.cli.demo import run_demo

    return run_demo()


def cmd_run(args) -> int:
    """``relaycomp run``."""
    from relaycomp.cli.run import run_artifact

    return run_artifact(args)


def cmd_emulate_device(args) -> int:
    """``relaycomp emulate-device``."""
    from relaycomp.cli.device import run_emulate

    return run_emulate(args)


def cmd_benchmark(args) -> int:
    """``relaycomp benchmark``."""
    from relaycomp.cli.benchmark import run_benchmark

    return run_benchmark(args)


COMMANDS = {"compile": cmd_compile, "run": cmd_run, "inspect": cmd_inspect,
            "benchmark": cmd_benchmark,
            "targets": cmd_targets, "passes": cmd_passes, "demo": cmd_demo,
            "emulate-device": cmd_emulate_device}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``relaycomp`` script."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings(), sigterm_interrupts():  # both restored on the way out
        warnings.showwarning = show_python_warning
        return _dispatch(args)


def _dispatch(args) -> int:
    """Run the chosen command; every failure ends as one error line and an exit code."""
    try:
        handler = COMMANDS.get(args.command) or args.feature_commands[args.command]
        return handler(args)
    except RelaycompError as err:
        if args.debug:
            traceback.print_exc()
        print(f"relaycomp: error: {err}", file=sys.stderr)
        if err.hint:
            print(f"  hint: {err.hint}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("relaycomp: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:  # noqa: BLE001 - the last line of defence for the user
        if args.debug:
            traceback.print_exc()
        print(f"relaycomp: internal error: {type(err).__name__}: {err}".splitlines()[0],
              file=sys.stderr)
        print("  hint: rerun with --debug and report the traceback", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
