"""An emulated ARM device on this machine: a TVM RPC server running in an aarch64 Python under
qemu-user, registered at an RPC tracker like a real board.

::

    with EmulatedDevice(tracker="127.0.0.1:9190", key="qemu-aarch64"):
        tune("model.onnx", TuneConfig(target="raspberry-pi-4", rpc="127.0.0.1:9190",
                                      key="qemu-aarch64", trials=64))

``relaycomp emulate-device --rpc HOST:PORT --key KEY`` does the same from the command line and
serves until Ctrl-C. Nothing is simulated on the host side: candidates and artifacts are
cross-compiled for the target, uploaded over RPC, loaded by TVM's aarch64 runtime (the
``apache-tvm`` wheel for ``manylinux aarch64``) and run by emulated ARM instructions. Timings are
those of the emulator, so they rank candidates only roughly; the device exists to check that the
cross-compiled path works end to end without a board.

The first start builds the device's root folder (about a minute, needs root, ``debootstrap``,
``qemu-user-static`` and network access to Debian's and PyPI's mirrors): Debian's aarch64 Python
3.11 unpacked by ``debootstrap --foreign`` (no chroot, no binfmt), plus the aarch64 wheels of the
host's own TVM, tvm-ffi and numpy versions. Later starts reuse it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Self

from relaycomp.compiler.manifest import write_atomically
from relaycomp.errors import RelaycompError, last_line
from relaycomp.registry import Registry

DEBIAN_SUITE = "bookworm"          # its python3.11 matches the cp311 wheels below
DEBIAN_MIRROR = "http://deb.debian.org/debian"
PYTHON_PACKAGES = ("python3.11-minimal", "libpython3.11-stdlib")
WHEELS = ("apache-tvm", "apache-tvm-ffi", "numpy", "ml_dtypes")   # pinned to the host's versions
EXTRA_WHEELS = ("psutil", "cloudpickle")                          # the RPC server's helpers
REGISTER_TIMEOUT_SECONDS = 300


class EmulatorError(RelaycompError):
    """The emulated device cannot be prepared or started."""


@dataclass(frozen=True)
class Arch:
    """An architecture qemu-user can run, with where its Python and wheels come from."""

    name: str
    debian_arch: str
    qemu: str
    wheel_platforms: tuple[str, ...]


ARCHES: Registry[Arch] = Registry("emulated architecture")
ARCHES.add("aarch64", Arch("aarch64", "arm64", "qemu-aarch64-static",
                           ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64",
                            "manylinux2014_aarch64")))

_TOOLS = {"debootstrap": "debootstrap", "dpkg-deb": "dpkg"}


def default_root() -> Path:
    """``$XDG_CACHE_HOME/relaycomp/emulated`` (``~/.cache/...`` by default)."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "relaycomp" / "emulated"


@dataclass(frozen=True)
class Sysroot:
    """A prepared device folder: Debian's aarch64 files and the Python packages for them."""

    arch: Arch
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "rootfs" / "usr" / "bin" / "python3.11"

    @property
    def site(self) -> Path:
        return self.path / "site-packages"

    def command(self, *args: str) -> list[str]:
        """The command line running the device's Python with ``args`` under qemu (found on
        PATH: :func:`prepare` checked it is there)."""
        return [self.arch.qemu, "-L", str(self.path / "rootfs"), str(self.python), *args]

    def environment(self, threads: int) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.site), "TVM_NUM_THREADS": str(threads),
                "PYTHONDONTWRITEBYTECODE": "1"}


def _require(program: str, package: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise EmulatorError(f"'{program}' not found on PATH",
                            hint=f"install it: apt-get install {package}")
    return found


def _wanted_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in WHEELS}


def prepare(arch: str = "aarch64", root: str | os.PathLike | None = None,
            mirror: str = DEBIAN_MIRROR, log=print) -> Sysroot:
    """The device folder for ``arch`` under ``root``, built on first use (see the module doc).

    It is rebuilt when the host's TVM, tvm-ffi or numpy version changes, so the device always
    runs the runtime matching the compiler that builds for it. Processes preparing the same
    folder at once (two test workers, two terminals) take turns: the second finds it ready.
    """
    spec = ARCHES.get(arch)
    sysroot = Sysroot(spec, Path(root or default_root()) / spec.name)
    _require(spec.qemu, "qemu-user-static")
    try:
        sysroot.path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(sysroot.path.parent / f"{spec.name}.lock", "w")  # noqa: SIM115
    except OSError:  # a read-only root (a folder prepared by root, used by a user): no turns
        return _prepared(sysroot, mirror, log)
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return _prepared(sysroot, mirror, log)


def _prepared(sysroot: Sysroot, mirror: str, log) -> Sysroot:
    """``sysroot``, built unless its stamp names the host's versions (the caller holds the lock)."""
    stamp = sysroot.path / "ready.json"
    versions = _wanted_versions()
    if stamp.is_file() and json.loads(stamp.read_text()) == versions and sysroot.python.is_file():
        return sysroot
    for program, package in _TOOLS.items():
        _require(program, package)
    log(f"preparing an emulated {sysroot.arch.name} device in {sysroot.path} (once, about a minute)")
    _unpack_python(sysroot, mirror)
    _install_wheels(sysroot, versions)
    write_atomically(stamp, json.dumps(versions).encode())  # written last: the folder is whole
    return sysroot


def _unpack_python(sysroot: Sysroot, mirror: str) -> None:
    """Debian's Python for the device, unpacked (``--foreign``: nothing of it runs here)."""
    rootfs = sysroot.path / "rootfs"
    if not sysroot.python.is_file():
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.mkdir(parents=True)
        _run(["debootstrap", "--foreign", "--variant=minbase",
              f"--arch={sysroot.arch.debian_arch}", f"--include={','.join(PYTHON_PACKAGES)}",
              DEBIAN_SUITE, str(rootfs), mirror], "debootstrap")
        # The first stage unpacks only the essential packages; the included ones are downloaded.
        for package in sorted((rootfs / "var" / "cache" / "apt" / "archives").glob("*.deb")):
            _run(["dpkg-deb", "-x", str(package), str(rootfs)], f"unpacking {package.name}")
    if not sysroot.python.is_file():
        raise EmulatorError(f"debootstrap gave no {sysroot.python.name} in {rootfs}")


def _install_wheels(sysroot: Sysroot, versions: dict[str, str]) -> None:
    shutil.rmtree(sysroot.site, ignore_errors=True)
    platforms = [f"--platform={p}" for p in sysroot.arch.wheel_platforms]
    requirements = [f"{name}=={version}" for name, version in versions.items()]
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          "--target", str(sysroot.site), "--only-binary=:all:", "--python-version=3.11",
          "--implementation=cp", "--abi=cp311", *platforms, *requirements, *EXTRA_WHEELS],
         f"pip (the {sysroot.arch.name} wheels of {', '.join(requirements)})")


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, check=False, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise EmulatorError(f"{what} failed: {last_line(result.stdout)}",
                            hint="the first start needs root and access to Debian's and PyPI's "
                                 "mirrors")


# The device side: TVM's RPC server loop run inside the emulated Python itself. The stock
# `python -m tvm.exec.rpc_server` starts it in a child Python through `sys.executable`, which the
# host kernel cannot exec without binfmt_misc; sessions are forked, which qemu-user handles.
_SERVER = """
import sys
from tvm.rpc.server import PopenRPCServerState
host, port, tracker_host, tracker_port, key = sys.argv[1:6]
state = PopenRPCServerState(host, int(port), int(port) + 100, tracker_addr=(tracker_host,
                            int(tracker_port)), key=key)
print(f"serving on {host}:{state.port}", flush=True)
state.thread.join()  # returns only when the server loop died (a session crashed it)
print("the RPC server loop ended", flush=True)
sys.exit(3)
"""


class EmulatedDevice:
    """An RPC server under ``key`` at ``tracker`` ("HOST:PORT"), running emulated ``arch`` code.

    A context manager: entering prepares the device folder, starts the server and waits until the
    tracker lists the key; leaving stops it. The server binds to ``host`` (loopback by default)
    from ``port`` upwards.
    """

    def __init__(self, tracker: str, key: str, arch: str = "aarch64", host: str = "127.0.0.1",
                 port: int = 9090, threads: int = 2, root: str | os.PathLike | None = None):
        tracker_host, _, tracker_port = tracker.rpartition(":")
        if not tracker_host or not tracker_port.isdigit():
            raise EmulatorError(f"--rpc expects HOST:PORT, got '{tracker}'")
        self.tracker = (tracker_host, int(tracker_port))
        self.key, self.arch, self.host, self.port = key, arch, host, port
        self.threads, self.root = threads, root
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None   # the server's output, once started

    def start(self, log=print) -> Self:
        """Prepare the folder, start the server, and return once the tracker lists it."""
        from relaycomp.runtime.tracker import tracker_summary

        _require(ARCHES.get(self.arch).qemu, "qemu-user-static")
        tracker_summary(*self.tracker, error=EmulatorError)  # fails before a minute of preparing
        sysroot = prepare(self.arch, self.root, log=log)
        command = sysroot.command("-c", _SERVER, self.host, str(self.port),
                                  self.tracker[0], str(self.tracker[1]), self.key)
        self.log_path = sysroot.path / f"server-{self.key}.log"  # the last start's, per key
        with open(self.log_path, "w") as log_file:  # a file: a full pipe would stall the server
            self.process = subprocess.Popen(command, env=sysroot.environment(self.threads),
                                            stdout=log_file, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        try:
            self._wait_until_registered()
        except BaseException:
            self.stop()
            raise
        log(f"emulated {self.arch} device '{self.key}' serving, registered at "
            f"{self.tracker[0]}:{self.tracker[1]}")
        return self

    def _wait_until_registered(self) -> None:
        """Wait for the server's start line, then for its key at the tracker."""
        from relaycomp.runtime.tracker import tracker_summary

        deadline = time.monotonic() + REGISTER_TIMEOUT_SECONDS
        while "serving on" not in self.log_path.read_text():
            if self.process.poll() is not None:
                raise EmulatorError(f"the emulated {self.arch} server exited: "
                                    f"{last_line(self.log_path.read_text())}")
            if time.monotonic() > deadline:
                raise EmulatorError(f"the emulated {self.arch} server did not start within "
                                    f"{REGISTER_TIMEOUT_SECONDS} s; see {self.log_path}")
            time.sleep(0.5)
        while time.monotonic() < deadline:
            if self.key in tracker_summary(*self.tracker, error=EmulatorError)["queue_info"]:
                return
            time.sleep(0.5)
        raise EmulatorError(f"the emulated {self.arch} server did not register at the tracker "
                            f"within {REGISTER_TIMEOUT_SECONDS} s; see {self.log_path}")

    def wait(self) -> None:
        """Serve until Ctrl-C (or SIGTERM, through the CLI); the server ending on its own is an
        ``EmulatorError`` naming its exit status and the last line of its log."""
        code = self.process.wait()
        status = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        raise EmulatorError(f"the emulated {self.arch} device's RPC server stopped ({status}): "
                            f"{last_line(self.log_path.read_text())}",
                            hint=f"its log: {self.log_path}; a crashing artifact (a truncated "
                                 "or foreign .so) takes it down - start it again")

    def stop(self) -> None:
        """Kill the server and the sessions it forked."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
        self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()
