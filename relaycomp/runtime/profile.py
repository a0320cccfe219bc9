"""Per-kernel profile of one compiled model, from the Relax VM's instrument hook.

TVM 0.27's Relax-only runtime has no VM profiler (``VirtualMachine(..., profile=True)`` is gone),
but its VM calls an instrument function before and after every ``Call`` instruction, with the
callee's name and arguments (``VirtualMachine.set_instrument``). :func:`profile_vm` times each
call between the two, and from the arguments also counts:

- bytes each kernel reads and writes (the sizes of its tensor arguments);
- the storage the VM allocates per inference (``vm.builtin.alloc_storage``: the statically
  planned workspace plus the outputs, all live until ``main`` returns, so their sum is the peak);
- the weights (tensor arguments neither an input nor allocated during the run: constants).

Times include one Python callback per call (a few microseconds): the profile ranks kernels and
gives their shares; the end-to-end latency comes from uninstrumented runs
(:mod:`relaycomp.runtime.benchmark`).
"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass

from tvm import relax

_BUILTIN_PREFIX = "vm."
_BITS = re.compile(r"(\d+)(x\d+)?$")


@dataclass(frozen=True)
class KernelStat:
    """One kernel (or the VM's own builtins, as one row): per inference."""

    name: str
    calls: int
    ms: float
    share: float
    bytes: int
    dtypes: tuple[str, ...]

    def to_json(self) -> dict:
        """JSON form (``benchmark --json``)."""
        return {"name": self.name, "calls": self.calls, "ms": self.ms, "share": self.share,
                "bytes": self.bytes, "dtypes": list(self.dtypes)}


@dataclass(frozen=True)
class Profile:
    """What :func:`profile_vm` measured, per inference (means over ``runs`` runs)."""

    kernels: list[KernelStat]  # by time, the slowest first; VM builtins as one row
    runs: int
    workspace_bytes: int
    storages: int
    weight_bytes: int
    bytes_moved: int  # tensor arguments of every kernel call (reads + writes)


def tensor_bytes(tensor) -> int:
    """Bytes of a TVM tensor from its shape and dtype (sub-byte types rounded up)."""
    dtype = str(tensor.dtype)
    match = _BITS.search(dtype)
    bits = int(match.group(1)) if match else 8  # bool
    lanes = int(match.group(2)[1:]) if match and match.group(2) else 1
    return math.ceil(math.prod(int(d) for d in tensor.shape) * bits * lanes / 8)


class _Recorder:
    """The instrument: called by the VM before and after each call."""

    def __init__(self, input_pointers: set[int]):
        self.inputs = input_pointers
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.bytes: dict[str, int] = defaultdict(int)
        self.dtypes: dict[str, set[str]] = defaultdict(set)
        self.storage_bytes = 0
        self.storages = 0
        self.allocated: set[int] = set()
        self.weights: dict[int, int] = {}
        self._started = 0.0

    def __call__(self, func, symbol: str, before: bool, result, *args):
        now = time.perf_counter()
        if before:
            self._started = now
            return relax.VMInstrumentReturnKind.NO_OP
        self.seconds[symbol] += now - self._started
        self.calls[symbol] += 1
        if symbol == "vm.builtin.alloc_storage":
            shape, dtype = args[1], str(args[3])
            match = _BITS.search(dtype)
            bits = int(match.group(1)) if match else 8
            self.storage_bytes += math.prod(int(d) for d in shape) * bits // 8
            self.storages += 1
        elif symbol == "vm.builtin.alloc_tensor" and hasattr(result, "data_ptr"):
            self.allocated.add(result.data_ptr())
        elif not symbol.startswith(_BUILTIN_PREFIX):
            for arg in args:
                if hasattr(arg, "data_ptr") and hasattr(arg, "shape"):
                    size = tensor_bytes(arg)
                    self.bytes[symbol] += size
                    self.dtypes[symbol].add(str(arg.dtype))
                    pointer = arg.data_ptr()
                    if pointer not in self.allocated and pointer not in self.inputs:
                        self.weights[pointer] = size
        self._started = time.perf_counter()  # the callback's own time is not the next call's
        return relax.VMInstrumentReturnKind.NO_OP


def profile_vm(vm, main_args: list, runs: int, sync=None) -> Profile:
    """Run ``vm["main"](*main_args)`` ``runs`` times with the instrument set; per inference
    results (see the module doc). ``sync`` waits for the device (GPU) after each call."""
    if runs < 1:
        raise ValueError(f"profile runs must be at least 1, got {runs}")
    recorder = _Recorder({a.data_ptr() for a in main_args if hasattr(a, "data_ptr")})
    vm["main"](*main_args)  # a fresh VM's first call also loads and allocates: not profiled
    vm.set_instrument(recorder)
    try:
        for _ in range(runs):
            vm["main"](*main_args)
            if sync is not None:
                sync()
    finally:
        vm.set_instrument(None)
    kernels = [name for name in recorder.seconds if not name.startswith(_BUILTIN_PREFIX)]
    rows = [(name, recorder.calls[name] // runs, recorder.seconds[name] / runs * 1e3,
             recorder.bytes[name] // runs, tuple(sorted(recorder.dtypes[name])))
            for name in kernels]
    builtins = [name for name in recorder.seconds if name.startswith(_BUILTIN_PREFIX)]
    if builtins:
        rows.append(("(VM: allocation, shape checks, reshapes)",
                     sum(recorder.calls[n] for n in builtins) // runs,
                     sum(recorder.seconds[n] for n in builtins) / runs * 1e3, 0, ()))
    total = sum(row[2] for row in rows) or 1.0
    stats = sorted((KernelStat(name, calls, ms, ms / total, size, dtypes)
                    for name, calls, ms, size, dtypes in rows), key=lambda k: -k.ms)
    return Profile(kernels=stats, runs=runs, workspace_bytes=recorder.storage_bytes // runs,
                   storages=recorder.storages // runs, weight_bytes=sum(recorder.weights.values()),
                   bytes_moved=sum(k.bytes for k in stats))
