"""Compile: ONNX → Relax → staged pipeline → VM executable → exported artifact + manifest.

Guarantees: either the artifact and its manifest are both written, or neither is (temporary files
are removed on any failure); the toolchain and the output path are checked before the long
compile starts. A ``.so`` output is a shared library linked with the target's toolchain; a
``.tar`` output is an object-file archive the device can link itself (no cross compiler needed).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import tvm
from tqdm import tqdm

from relaycomp import __version__, ir
from relaycomp.compiler.features import Plan, PlanContext, feature_of
from relaycomp.compiler.manifest import Manifest, check_output_file, file_digest, write_manifest
from relaycomp.compiler.pipeline import (
    PipelineReport,
    Placement,
    Stage,
    default_stages,
    run_stages,
    split_before,
    stage_names,
    with_passes,
)
from relaycomp.errors import BuildError, RelaycompError, last_line
from relaycomp.frontend.examples import resolve_model_path
from relaycomp.frontend.onnx_import import ImportedModel, import_onnx, load_onnx
from relaycomp.targets import TargetSpec, resolve

ARTIFACT_FORMATS = {".so": "shared-library", ".tar": "object-archive"}


@dataclass(frozen=True)
class CompileConfig:
    """How to compile: target name/triple/preset, pinned input shapes and target overrides, the
    feature configs to apply (any registered :class:`relaycomp.compiler.features.Feature`'s:
    ``QuantConfig``, ``PruneConfig``, ``TuneConfig``, a plugin's) and the data they may use."""

    target: str = "host"
    input_shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)
    mcpu: str | None = None
    arch: str | None = None
    num_cores: int | None = None
    stages: tuple[Stage, ...] | None = None  # None: the target kind's default pipeline
    extra_passes: tuple[Placement, ...] = ()  # user passes, inserted into ``stages``
    pass_options: Mapping[str, Mapping] = field(default_factory=dict)  # pass -> factory kwargs
    dump_ir: Path | None = None  # write the IR before/after every pass into this folder
    features: tuple[object, ...] = ()  # feature configs, planned and applied in pipeline order
    calibration: object | None = None  # representative inputs (.npz, folder, example:, dicts)
    evaluation: object | None = None  # held-out inputs (+ labels) for accuracy checks

    def __post_init__(self):
        if self.num_cores is not None and self.num_cores < 1:
            raise RelaycompError(f"num_cores must be at least 1, got {self.num_cores}")
        object.__setattr__(self, "features", tuple(self.features))
        for config in self.features:
            feature_of(config)  # an unknown config type fails here, listing the known ones


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
    check_output_file(output, "the artifact", BuildError)
    spec = resolve(config.target, mcpu=config.mcpu, arch=config.arch, num_cores=config.num_cores)
    fcompile = spec.toolchain.fcompile() if artifact_format == "shared-library" else None

    source = {}
    if not isinstance(model, onnx.ModelProto):
        path = resolve_model_path(model)
        source = {"file": str(path), "sha256": file_digest(path) if path.is_file() else None}
        model = load_onnx(path)
    imported = import_onnx(model, config.input_shapes)
    stages = with_passes(config.stages or default_stages(spec.kind), config.extra_passes)
    order = stage_names(stages)  # features plan and run in pipeline order
    features = sorted(((feature_of(c), c) for c in config.features),
                      key=lambda pair: order.index(pair[0].placement.stage)
                      if pair[0].placement.stage in order else len(order))
    stages = with_passes(stages, [feature.placement for feature, _ in features])
    # The three long steps of a compile, on an interactive stderr only (a feature's planning,
    # e.g. int8 calibration, draws its own bar under this one).
    with tqdm(total=3, desc="compile: passes", unit="step", file=sys.stderr, disable=None,
              leave=False, dynamic_ncols=True) as bar:
        mod, report, plans = _run_planned(imported, stages, spec, config, features)
        bar.set_description_str("compile: code generation", refresh=False)
        bar.update(1)
        try:
            executable = ir.build_executable(mod, spec.tvm_target())
        except Exception as err:
            raise BuildError(f"code generation for {spec.name} failed: {err}") from err
        bar.set_description_str("compile: export", refresh=False)
        bar.update(1)

        manifest = _manifest(imported, spec, report, artifact_format, source)
        for (feature, _), plan in zip(features, plans):
            facts = report.facts(feature.placement.name)
            manifest.report[feature.name] = {**(plan.report or {}), **facts}
        _export(executable, output, fcompile, manifest)
        bar.update(1)
    return Artifact(output, manifest, report)


def _run_planned(imported: ImportedModel, stages: list[Stage], spec: TargetSpec,
                 config: CompileConfig, features: list) -> tuple[tvm.IRModule, PipelineReport,
                                                                 list[Plan]]:
    """Run ``stages``; before the stage of each feature's pass, plan the feature on the module
    as the pipeline left it there and hand the plan's options to its pass."""
    target = spec.tvm_target()
    mod, report, done = imported.mod, None, 0
    options = dict(config.pass_options)
    plans: list[Plan] = []
    for feature, feature_config in features:
        front, rest = split_before(stages[done:], feature.placement.stage)
        mod, report = run_stages(mod, front, target, dump_ir=config.dump_ir, options=options,
                                 report=report)
        done += len(front)
        context = PlanContext(mod, spec, imported, rest, config.calibration, config.evaluation)
        plan = feature.plan(feature_config, context)
        name = feature.placement.name
        options[name] = {**plan.options, **options.get(name, {})}  # the caller's options win
        plans.append(plan)
    mod, report = run_stages(mod, stages[done:], target, dump_ir=config.dump_ir,
                             options=options, report=report)
    return mod, report, plans


def _artifact_format(output: Path) -> str:
    try:
        return ARTIFACT_FORMATS[output.suffix]
    except KeyError:
        raise BuildError(f"cannot tell the artifact format from '{output.name}'",
                         hint="name the output *.so (shared library) or *.tar (object archive "
                              "to link on the device)") from None


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
                "layout": report.facts("plan_conv_layout") or None,
                "winograd": report.facts("lower_convs_to_winograd") or None,
                "seconds_by_stage": report.seconds_by_stage()},
    )

