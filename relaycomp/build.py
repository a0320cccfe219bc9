"""Compile: ONNX → Relax → staged pipeline → VM executable → exported artifact + manifest.

Guarantees: either the artifact and its manifest are both written, or neither is (temporary files
are removed on any failure); the toolchain and the output path are checked before the long
compile starts. A ``.so`` output is a shared library linked with the target's toolchain; a
``.tar`` output is an object-file archive the device can link itself (no cross compiler needed).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import tvm

from . import __version__, ir
from .errors import BuildError, RelaycompError, last_line
from .examples import resolve_model_path
from .frontend import ImportedModel, import_onnx, load_onnx
from .manifest import Manifest, file_digest, write_manifest
from .pipeline import (
    PipelineReport,
    Placement,
    Stage,
    default_stages,
    run_stages,
    split_before,
    with_passes,
)
from .targets import TargetSpec, resolve

ARTIFACT_FORMATS = {".so": "shared-library", ".tar": "object-archive"}


@dataclass(frozen=True)
class CompileConfig:
    """How to compile: target name/triple/preset, pinned input shapes and target overrides."""

    target: str = "host"
    input_shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)
    mcpu: str | None = None
    arch: str | None = None
    num_cores: int | None = None
    stages: tuple[Stage, ...] | None = None  # None: the target kind's default pipeline
    extra_passes: tuple[Placement, ...] = ()  # user passes, inserted into ``stages``
    pass_options: Mapping[str, Mapping] = field(default_factory=dict)  # pass -> factory kwargs
    dump_ir: Path | None = None  # write the IR before/after every pass into this folder
    prune: object | None = None  # a relaycomp.prune.PruneConfig: passes/prune_channels
    tuning: object | None = None  # a relaycomp.tune.TuneConfig: tune and/or apply its database
    quantize: object | None = None  # a relaycomp.quantize.QuantConfig: int8 layers
    calibration: object | None = None  # calibration data for ``quantize`` (.npz, dir, dicts)
    evaluation: object | None = None  # held-out data (+ labels) for the accuracy guard

    def __post_init__(self):
        if self.num_cores is not None and self.num_cores < 1:
            raise RelaycompError(f"num_cores must be at least 1, got {self.num_cores}")


@dataclass
class Artifact:
    """A built artifact: its path, manifest and what the pipeline did."""

    path: Path
    manifest: Manifest
    pipeline: PipelineReport


def compile_model(model: str | os.PathLike | onnx.ModelProto, output: str | os.PathLike,
                  config: CompileConfig | None = None) -> Artifact:
    """Compile ``model`` (a path, ``example:NAME`` or a ModelProto) into ``output``."""
    config = config or CompileConfig()
    output = Path(output)
    artifact_format = _artifact_format(output)
    _check_writable(output)
    spec = resolve(config.target, mcpu=config.mcpu, arch=config.arch, num_cores=config.num_cores)
    fcompile = spec.toolchain.fcompile() if artifact_format == "shared-library" else None

    source = {}
    if not isinstance(model, onnx.ModelProto):
        path = resolve_model_path(model)
        source = {"file": str(path), "sha256": file_digest(path) if path.is_file() else None}
        model = load_onnx(path)
    imported = import_onnx(model, config.input_shapes)
    stages = with_passes(config.stages or default_stages(spec.kind), config.extra_passes)
    options, quantize_report = config.pass_options, None
    if config.quantize is not None:  # calibrated QDQ annotation opens the quantize stage
        from .quantize import prepare_compile as prepare_quantize

        stages, options, quantize_report = prepare_quantize(stages, options, config, imported)
    prune_reports: list = []  # passes/prune_channels fills it in the prune stage
    if config.prune is not None:
        stages = with_passes(stages, [Placement("prune_channels", "prune")])
        from .prune_view import onnx_layer_names

        own = {"config": config.prune, "reports": prune_reports,  # + pass_options' calib
               "layer_names": onnx_layer_names(model)}
        options = {**options, "prune_channels": {**options.get("prune_channels", {}), **own}}
    # Up to ``schedule`` first: tuning tasks are the kernels of the pruned/quantized module.
    front, back = split_before(stages, "schedule")
    mod, report = run_stages(imported.mod, front, spec.tvm_target(), dump_ir=config.dump_ir,
                             options=options)
    tuning_db, tuning_summary = None, None
    if config.tuning is not None:  # tuned kernels replace heuristic ones in the schedule stage
        from .tune import prepare_compile

        back, tuning_db, tuning_summary = prepare_compile(mod, spec, back, config.tuning)
    with tuning_db if tuning_db is not None else contextlib.nullcontext():
        mod, report = run_stages(mod, back, spec.tvm_target(), dump_ir=config.dump_ir,
                                 options=options, report=report)
    try:
        executable = ir.build_executable(mod, spec.tvm_target())
    except Exception as err:
        raise BuildError(f"code generation for {spec.name} failed: {err}") from err

    manifest = _manifest(imported, spec, report, artifact_format, source)
    if prune_reports:
        manifest.report["prune"] = prune_reports[-1].to_json()
    if tuning_summary is not None:
        manifest.report["tuning"] = tuning_summary
    if quantize_report is not None:
        manifest.report["quantize"] = quantize_report.to_json()
    _export(executable, output, fcompile, manifest)
    return Artifact(output, manifest, report)


def _artifact_format(output: Path) -> str:
    try:
        return ARTIFACT_FORMATS[output.suffix]
    except KeyError:
        raise BuildError(f"cannot tell the artifact format from '{output.name}'",
                         hint="name the output *.so (shared library) or *.tar (object archive "
                              "to link on the device)") from None


def _check_writable(output: Path) -> None:
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise BuildError(f"cannot write {output}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (output.exists() and not os.access(output, os.W_OK)):
        raise BuildError(f"cannot write {output}: permission denied")


def _export(executable, output: Path, fcompile, manifest: Manifest) -> None:
    """Export to a temporary name, then move the artifact and manifest into place together."""
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.stem}.", suffix=output.suffix)
    os.close(fd)
    try:
        kwargs = {"fcompile": fcompile} if fcompile is not None else {}
        try:
            executable.export_library(tmp, **kwargs)
        except RelaycompError:
            raise
        except Exception as err:
            raise BuildError(f"exporting {output.name} failed: {last_line(err)}") from err
        os.replace(tmp, output)
        try:
            write_manifest(manifest, output)
        except BaseException:
            output.unlink(missing_ok=True)  # an artifact without its manifest is useless
            raise
    finally:
        Path(tmp).unlink(missing_ok=True)


def _manifest(imported: ImportedModel, spec: TargetSpec, report: PipelineReport,
              artifact_format: str, source: dict) -> Manifest:
    kernels = report.records[-1].funcs_after["tir"] if report.records else None
    return Manifest(
        inputs=imported.inputs, outputs=imported.outputs, target=spec.to_json(),
        artifact_format=artifact_format, passes=report.passes_applied, source=source,
        versions={"relaycomp": __version__, "tvm": tvm.__version__, "onnx": onnx.__version__},
        report={"import": imported.report, "kernels": kernels, "fusion": report.fusion(),
                "seconds_by_stage": report.seconds_by_stage()},
    )

