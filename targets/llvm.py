"""Questions to TVM's LLVM: is this -mcpu valid, which features does a target imply, the host.

The one module of ``relaycomp.targets`` that calls version-sensitive TVM LLVM helpers.
"""

from __future__ import annotations

import tvm_ffi
from tvm.target import Target, codegen

# Vector ISA extensions: code built for one of these faults (SIGILL) on a CPU without it.
# -mcpu also implies system features (pku, mwaitx, rdpru…) that TVM's code never uses, and
# hypervisors often hide them, so they must not decide whether a library runs here.
_VECTOR_FEATURE_PREFIXES = (
    "sse", "ssse", "avx", "fma", "f16c", "amx",
    "neon", "sve", "sme", "dotprod", "i8mm", "fullfp16", "fp16fml", "bf16",
)  # fmt: skip


def is_valid_cpu(mcpu: str, mtriple: str) -> bool:
    """True if LLVM knows ``mcpu`` for ``mtriple``.

    TVM itself only logs an error for an unknown -mcpu and silently compiles for "generic".
    """
    return bool(codegen.llvm_is_valid_cpu(mcpu, mtriple))


def cpu_names(mtriple: str) -> list[str]:
    """Every -mcpu LLVM accepts for ``mtriple``, sorted."""
    return sorted(str(name) for name in codegen.llvm_get_cpu_archlist(_llvm(mtriple)))


def cpu_features(target: dict) -> set[str]:
    """The LLVM features an llvm target dict enables (from its mtriple, mcpu and mattr)."""
    return {str(name) for name in codegen.llvm_get_cpu_features(Target(target))}


def unknown_features(target: dict) -> list[str]:
    """``+feature`` entries of ``mattr`` that LLVM does not recognise for the triple.

    TVM accepts any mattr string; LLVM only prints a warning and ignores the unknown ones.
    """
    enabled = cpu_features(target)
    requested = [str(attr) for attr in target.get("mattr", ())]
    return [attr for attr in requested if attr.startswith("+") and attr[1:] not in enabled]


def host_cpu() -> str | None:
    """LLVM's name for this machine's CPU (e.g. "znver3"), or None if it only knows "generic"."""
    name = str(codegen.llvm_get_system_cpu())
    return None if name in ("", "generic") else name


def host_features() -> dict[str, bool]:
    """This machine's CPU features as LLVM detects them: feature name → present."""
    detected = tvm_ffi.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures")()
    return {str(name): bool(present) for name, present in detected.items()}


def missing_vector_features(target: dict) -> list[str]:
    """Vector ISA features the llvm ``target`` implies but this machine's CPU lacks, sorted."""
    host = host_features()
    return sorted(
        feature
        for feature in cpu_features(target)
        if feature.startswith(_VECTOR_FEATURE_PREFIXES) and host.get(feature) is False
    )


def _llvm(mtriple: str) -> Target:
    return Target({"kind": "llvm", "mtriple": mtriple})
