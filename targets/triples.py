"""The target triples relaycomp knows: TVM kind, default TVM attributes and cross toolchain.

The table is data: adding a triple is one more ``Triple(...)`` entry (or ``TRIPLES.add`` from a
plugin), no code elsewhere changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relaycomp.registry import Registry
from relaycomp.targets.toolchain import Toolchain


@dataclass(frozen=True)
class Triple:
    """One target triple.

    ``defaults`` are TVM target attributes every spec of this triple starts from. ``toolchain``
    links libraries for it when it is not this machine's triple; None for device-only triples
    (cuda), whose library is linked by the toolchain of their CPU side.
    """

    name: str
    kind: str
    defaults: dict = field(default_factory=dict)
    toolchain: Toolchain | None = None
    description: str = ""


TRIPLES: Registry[Triple] = Registry("target triple")
"""Every known triple by name; ``cuda`` is an alias of ``nvptx64-nvidia-cuda``."""

ALIASES = {"cuda": "nvptx64-nvidia-cuda"}
"""Short names registered in TRIPLES next to the full triple."""

_NDK_BIN_DIRS = (
    "$ANDROID_NDK_HOME/toolchains/llvm/prebuilt/*/bin",
    "$ANDROID_NDK_ROOT/toolchains/llvm/prebuilt/*/bin",
)

_TABLE = (
    Triple(
        "x86_64-linux-gnu",
        kind="llvm",
        defaults={"mtriple": "x86_64-linux-gnu"},
        toolchain=Toolchain("x86_64-linux-gnu-gcc", "gcc-x86-64-linux-gnu"),
        description="64-bit x86 Linux, generic x86-64 (SSE2 only)",
    ),
    Triple(
        "aarch64-linux-gnu",
        kind="llvm",
        defaults={"mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]},
        toolchain=Toolchain("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
        description="64-bit Arm Linux (Armv8-A with NEON)",
    ),
    Triple(
        "armv7a-linux-gnueabihf",
        kind="llvm",
        # Without mfloat-abi=hard LLVM emits soft-float objects that the gnueabihf linker
        # refuses ("uses VFP register arguments, … does not").
        defaults={"mtriple": "armv7a-linux-gnueabihf", "mattr": ["+neon"], "mfloat-abi": "hard"},
        toolchain=Toolchain(
            "arm-linux-gnueabihf-gcc",
            "gcc-arm-linux-gnueabihf",
            options=("-march=armv7-a", "-mfpu=neon", "-mfloat-abi=hard"),
        ),
        description="32-bit Arm Linux, hard-float ABI (Armv7-A with NEON)",
    ),
    Triple(
        "aarch64-linux-android",
        kind="llvm",
        defaults={"mtriple": "aarch64-linux-android", "mattr": ["+neon"]},
        toolchain=Toolchain(
            "aarch64-linux-android*-clang",
            None,
            search_dirs=_NDK_BIN_DIRS,
            install_hint=(
                "install the Android NDK (developer.android.com/ndk) and put "
                "toolchains/llvm/prebuilt/<host>/bin on PATH or set ANDROID_NDK_HOME"
            ),
        ),
        description="64-bit Android (Armv8-A with NEON), linked by the NDK's clang",
    ),
    Triple(
        "nvptx64-nvidia-cuda",
        kind="cuda",
        defaults={"arch": "sm_80"},
        description="NVIDIA GPU via CUDA, alias cuda (default sm_80; CPU side: this machine)",
    ),
)

for _triple in _TABLE:
    TRIPLES.add(_triple.name, _triple)
for _alias, _name in ALIASES.items():
    TRIPLES.add(_alias, TRIPLES.get(_name))


def triple_names() -> list[str]:
    """Known triples without their aliases, in table order."""
    return [name for name in TRIPLES.names() if name not in ALIASES]
