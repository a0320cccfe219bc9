"""This machine: its triple and core count."""

from __future__ import annotations

import os
import platform

import psutil

# platform.machine() -> the triple relaycomp uses for a Linux machine of that architecture.
_MACHINE_TRIPLES = {
    "x86_64": "x86_64-linux-gnu",
    "amd64": "x86_64-linux-gnu",
    "aarch64": "aarch64-linux-gnu",
    "arm64": "aarch64-linux-gnu",
    "armv7l": "armv7a-linux-gnueabihf",
}


def host_triple() -> str:
    """This machine's target triple, e.g. "x86_64-linux-gnu" (from ``platform.machine()``)."""
    machine = platform.machine().lower()
    return _MACHINE_TRIPLES.get(machine, f"{machine}-linux-gnu")


def physical_cores() -> int:
    """Physical core count (hyper-threads are no use to TVM's thread pool), at least 1."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def default_num_cores() -> int:
    """``num-cores`` of a CPU target that names none (a bare triple, a preset without it).

    MetaSchedule refuses an llvm target without ``num-cores`` and the CPU schedules size their
    parallel loops by it, so every CPU target carries one. Without a better guess the device is
    taken to be like this machine: its logical CPU count, which is also the thread count
    ``relaycomp run`` used for such targets. ``host`` uses :func:`physical_cores` instead, and
    ``--num-cores`` or a preset's ``num-cores`` override both.
    """
    return os.cpu_count() or 1
