"""resolve(): a user's target name → TargetSpec.

Names are tried in order: a TVM target string (``"llvm -mtriple=... -mcpu=... -mattr=..."``,
or any name below followed by such flags), "host", a known triple (or "cuda"), a bundled preset,
one of the user's presets (:func:`~relaycomp.targets.presets.user_preset_dir`), a path to a
preset ``.toml`` file.
"""

from __future__ import annotations

import dataclasses
import platform

from relaycomp.errors import TargetError
from relaycomp.targets import llvm
from relaycomp.targets.energy import EnergyModel, default_energy
from relaycomp.targets.host import host_triple, physical_cores
from relaycomp.targets.kinds import KINDS
from relaycomp.targets.presets import PRESETS, Preset, load_preset, user_preset_files
from relaycomp.targets.spec import TargetSpec
from relaycomp.targets.target_string import (
    is_target_string,
    parse_target_string,
    triple_of_mtriple,
)
from relaycomp.targets.toolchain import NATIVE
from relaycomp.targets.triples import TRIPLES, triple_names

HOST = "host"


def _host_preset() -> Preset:
    """This machine: its triple, LLVM's name for its CPU and its physical cores.

    Vector features LLVM's CPU name implies but this CPU lacks (a hypervisor can hide AVX
    behind a "znver3" model number) are switched off, so host code always runs here.
    """
    triple = host_triple()
    if triple not in TRIPLES:
        raise TargetError(
            f"this machine's architecture '{platform.machine()}' is not supported",
            hint="known triples: " + ", ".join(triple_names()),
        )
    mcpu = llvm.host_cpu()
    if mcpu is not None and not llvm.is_valid_cpu(mcpu, TRIPLES.get(triple).defaults["mtriple"]):
        mcpu = None
    probe = Preset(name=HOST, triple=triple, mcpu=mcpu)
    target, _ = KINDS.get(probe.kind).build(probe)
    hidden = tuple(f"-{feature}" for feature in llvm.missing_vector_features(target))
    cores = physical_cores()
    return Preset(
        name=HOST,
        triple=triple,
        mcpu=mcpu,
        mattr=hidden,
        num_cores=cores,
        description=f"this machine ({platform.machine()}, {mcpu or 'generic'}, {cores} cores)",
    )


def _known_names() -> list[str]:
    return [HOST, *TRIPLES.names(), *PRESETS.names(), *user_preset_files()]


def _from_target_string(text: str) -> Preset:
    """A TVM target string: ``llvm``/``cuda`` with flags, or a relaycomp name with flags."""
    parsed = parse_target_string(text)
    if parsed.base == "llvm":
        triple = triple_of_mtriple(parsed.mtriple or host_triple(), text)
        base = Preset(name=text, triple=triple, description="TVM target string")
    elif parsed.mtriple is not None:
        raise TargetError(f"target '{text}': -mtriple goes with llvm, not '{parsed.base}'",
                          hint=f'e.g. "llvm -mtriple={parsed.mtriple}"')
    else:
        # Errors in the flags name the whole string, not the preset's file.
        base = dataclasses.replace(_lookup(parsed.base), name=text, source="")
    return base.with_overrides(mcpu=parsed.mcpu, arch=parsed.arch, num_cores=parsed.num_cores,
                               mattr=parsed.mattr)


def _lookup(name: str) -> Preset:
    if is_target_string(name):
        return _from_target_string(name)
    if name == HOST:
        return _host_preset()
    if name in TRIPLES:
        triple = TRIPLES.get(name)
        return Preset(name=name, triple=triple.name, description=triple.description)
    if name in PRESETS:
        return PRESETS.get(name)
    user = user_preset_files()
    if name in user:
        return load_preset(user[name])
    if name.endswith(".toml"):
        return load_preset(name)
    raise TargetError(
        f"unknown target '{name}'",
        hint="known: " + ", ".join(_known_names()) + "; a path to a board .toml file; or "
        'a TVM target string ("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72")',
    )


def resolve(
    name: str,
    *,
    mcpu: str | None = None,
    arch: str | None = None,
    num_cores: int | None = None,
    mattr: tuple[str, ...] = (),
) -> TargetSpec:
    """The TargetSpec for ``name``: "host", a triple, "cuda", a preset (bundled or the user's),
    a preset .toml path, or a TVM target string ("llvm -mtriple=... -mcpu=... -mattr=...").

    ``mcpu``, ``arch`` and ``num_cores`` override the preset's (for cuda, ``mcpu`` is the CPU
    side's); ``mattr`` is added to its features. Unknown names and invalid values raise
    TargetError listing what is known.

    Example::

        resolve("raspberry-pi-4").target
        # {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"],
        #  "mcpu": "cortex-a72", "num-cores": 4}
        resolve("cuda", arch="sm_90").host["mtriple"]  # this machine's triple
    """
    preset = _lookup(name).with_overrides(mcpu=mcpu, arch=arch, num_cores=num_cores,
                                          mattr=tuple(mattr))
    target, host = KINDS.get(preset.kind).build(preset)
    library_triple = (host or target)["mtriple"]
    toolchain = NATIVE if library_triple == host_triple() else TRIPLES.get(library_triple).toolchain
    return TargetSpec(
        name=name,
        triple=TRIPLES.get(preset.triple).name,
        kind=preset.kind,
        target=target,
        host=host,
        toolchain=toolchain,
        description=preset.description,
    )


def known_targets() -> list[TargetSpec]:
    """Every known target: this machine, each triple, each bundled preset (for ``targets``)."""
    names = [HOST, *triple_names(), *PRESETS.names()]
    return [resolve(name) for name in names]


def user_targets() -> tuple[list[TargetSpec], list[str]]:
    """The user's presets that resolve, and one line per file that does not (or that a bundled
    name shadows): ``targets`` lists the first and warns about the second."""
    specs, problems = [], []
    for name, path in user_preset_files().items():
        if name in PRESETS or name in TRIPLES or name == HOST:
            problems.append(f"{path}: shadowed by the bundled target '{name}'; rename the file")
            continue
        try:
            specs.append(resolve(name))
        except TargetError as err:
            problems.append(str(err))
    return specs, problems


def target_energy(name: str, kind: str) -> EnergyModel:
    """The energy coefficients for the target ``name``: its preset's ``[energy]`` table, else
    the default of ``kind`` (also when ``name`` no longer resolves, e.g. a moved .toml)."""
    try:
        preset = _lookup(name)
    except TargetError:
        preset = None
    if preset is not None and preset.energy is not None:
        return preset.energy
    return default_energy(kind)
