"""TVM target kinds: how a preset of each kind becomes TVM target dicts, and whether it runs here.

Everything that differs between "llvm" and "cuda" lives in one ``Kind`` object each, found through
the ``KINDS`` registry, instead of ``if kind == "cuda"`` in every function.
"""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING, Protocol

import tvm

from relaycomp.errors import TargetError
from relaycomp.registry import Registry
from relaycomp.targets import llvm
from relaycomp.targets.host import default_num_cores, host_triple
from relaycomp.targets.triples import TRIPLES, Triple

if TYPE_CHECKING:
    from relaycomp.targets.presets import Preset
    from relaycomp.targets.spec import TargetSpec

_CUDA_ARCH = re.compile(r"sm_(\d+)(\d)[a-z]?")  # sm_80, sm_87, sm_90a, sm_100a


class Kind(Protocol):
    """One TVM target kind.

    ``accepts`` names the Preset fields that mean something for this kind; ``mcpu_field`` is the
    field ``resolve(mcpu=...)`` overrides. Example, a hypothetical ROCm kind::

        class Rocm:
            accepts = frozenset({"arch", "host_triple", "host_mcpu"})
            mcpu_field = "host_mcpu"
            def build(self, preset): return {"kind": "rocm", "mcpu": preset.arch}, {...}
            def runs_here(self, spec): return tvm.rocm(0).exist

        KINDS.add("rocm", Rocm())
    """

    accepts: frozenset[str]
    mcpu_field: str

    def build(self, preset: Preset) -> tuple[dict, dict | None]:
        """The TVM (target, host) dicts for ``preset``; invalid values raise TargetError."""

    def runs_here(self, spec: TargetSpec) -> bool:
        """True if a library built for ``spec`` can run on this machine."""


KINDS: Registry[Kind] = Registry("target kind")


def cpu_target(
    triple: Triple, mcpu: str | None, mattr: tuple[str, ...], num_cores: int | None, where: str
) -> dict:
    """The llvm target dict for a CPU of ``triple``, with mcpu and mattr checked against LLVM.

    ``num-cores`` is always set (MetaSchedule needs it): ``num_cores``, else
    :func:`~relaycomp.targets.host.default_num_cores`.
    """
    target = {"kind": "llvm", **copy.deepcopy(triple.defaults)}
    mtriple = target["mtriple"]
    if mcpu is not None:
        if not llvm.is_valid_cpu(mcpu, mtriple):
            raise TargetError(
                f"{where}: LLVM does not know mcpu '{mcpu}' for {mtriple}",
                hint="valid: " + ", ".join(llvm.cpu_names(mtriple)),
            )
        target["mcpu"] = mcpu
    merged_mattr = list(dict.fromkeys([*target.get("mattr", ()), *mattr]))
    if merged_mattr:
        target["mattr"] = merged_mattr
    target["num-cores"] = num_cores if num_cores is not None else default_num_cores()
    unknown = llvm.unknown_features(target)
    if unknown:
        raise TargetError(
            f"{where}: LLVM does not know mattr {', '.join(unknown)} for {mtriple}",
            hint="features are LLVM names with + or -, e.g. +neon, +avx512vnni, +dotprod",
        )
    return target


def _runs_on_this_cpu(target: dict) -> bool:
    return target["mtriple"] == host_triple() and not llvm.missing_vector_features(target)


class CpuKind:
    """CPU code through LLVM: mtriple, mcpu, mattr and num-cores."""

    accepts = frozenset({"mcpu", "mattr", "num_cores"})
    mcpu_field = "mcpu"

    def build(self, preset: Preset) -> tuple[dict, dict | None]:
        """An llvm target dict; no separate host."""
        triple = TRIPLES.get(preset.triple)
        return cpu_target(triple, preset.mcpu, preset.mattr, preset.num_cores, preset.where), None

    def runs_here(self, spec: TargetSpec) -> bool:
        """Same triple as this machine and no vector extension this CPU lacks."""
        return _runs_on_this_cpu(spec.target)


class CudaKind:
    """NVIDIA GPUs: a cuda target with an ``arch`` plus an llvm host for the CPU side.

    The CPU side defaults to this machine's triple; ``host_mcpu`` and ``num_cores`` describe it.
    """

    accepts = frozenset({"arch", "host_triple", "host_mcpu", "num_cores"})
    mcpu_field = "host_mcpu"

    def build(self, preset: Preset) -> tuple[dict, dict | None]:
        """A cuda target dict and the llvm dict of its host CPU."""
        arch = preset.arch or TRIPLES.get(preset.triple).defaults["arch"]
        if not _CUDA_ARCH.fullmatch(arch):
            raise TargetError(
                f"{preset.where}: invalid CUDA arch '{arch}'",
                hint="use sm_<major><minor>: sm_80 (A100), sm_87 (Jetson Orin), sm_90 (H100)",
            )
        host = TRIPLES.get(preset.host_triple or host_triple())
        if host.kind != "llvm":
            raise TargetError(f"{preset.where}: host-triple '{host.name}' is not a CPU triple")
        host_target = cpu_target(host, preset.host_mcpu, (), preset.num_cores, preset.where)
        return {"kind": "cuda", "arch": arch}, host_target

    def runs_here(self, spec: TargetSpec) -> bool:
        """A GPU is present, at least as new as ``arch``, and the host side runs here."""
        device = tvm.cuda(0)
        if not device.exist or not _runs_on_this_cpu(spec.host):
            return False
        major, minor = _CUDA_ARCH.fullmatch(spec.target["arch"]).groups()
        have = tuple(int(part) for part in device.compute_version.split("."))
        return have >= (int(major), int(minor))


KINDS.add("llvm", CpuKind())
KINDS.add("cuda", CudaKind())
