"""SIGTERM and SIGINT stop what a command started: ``relaycomp tune``'s worker processes and
``relaycomp emulate-device``'s qemu server die with it (no orphans), and the emulated device
reports its server's death (a session that crashed it) as one error line and exit 1.

Children are found with psutil while the command runs, then must be gone after it ends: an
orphan would be re-parented to init and keep running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from helpers import rpc_tracker, wait_for_device
from test_emulated_device import _missing_for_the_device


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "relaycomp.cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # a group of its own, to clean up after


def _wait_for_children(process: subprocess.Popen, names: tuple[str, ...],
                       timeout: float = 120) -> list[psutil.Process]:
    """The descendants of ``process`` once one runs a command line mentioning ``names``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        children = psutil.Process(process.pid).children(recursive=True)
        if any(any(n in " ".join(c.cmdline()) for n in names) for c in _alive(children)):
            return children
        time.sleep(0.2)
    raise AssertionError(f"no child running {names} within {timeout} s")


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for child in processes:
        try:
            if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    return alive


def _stop(process: subprocess.Popen, signum: int, children) -> tuple[int, str]:
    """Send ``signum`` to the command alone (not its group) and return (exit code, stderr)
    once it has ended; the children it had must be gone within a few seconds."""
    try:
        os.kill(process.pid, signum)
        _, stderr = process.communicate(timeout=60)
        deadline = time.monotonic() + 10
        while _alive(children) and time.monotonic() < deadline:
            time.sleep(0.2)
        orphans = [" ".join(c.cmdline())[:80] for c in _alive(children)]
        assert not orphans, f"left running: {orphans}"
        return process.returncode, stderr
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for child in _alive(children):
            child.kill()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_tune_stops_its_workers(signum, tmp_path):
    tune = _start("tune", "example:digits", "--trials", 64, "--trials-per-iter", 4,
                  "--tuning-db", tmp_path / "db", "--quiet")
    children = _wait_for_children(tune, ("popen_worker", "popen_pool"))
    code, stderr = _stop(tune, signum, children)
    assert code == 130 and "relaycomp: interrupted" in stderr, stderr


# ---- the emulated device (qemu-user) -----------------------------------------------------------

@pytest.fixture
def tracker():
    if reason := _missing_for_the_device():
        pytest.skip(reason)
    with rpc_tracker() as address:
        yield address


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_emulated_device_stops_its_qemu_server(tracker, signum):
    device = _start("emulate-device", "--rpc", tracker, "--key", "signals")
    children = _wait_for_children(device, ("qemu-aarch64",), timeout=300)
    wait_for_device(tracker, "signals", timeout=300)
    code, stderr = _stop(device, signum, children)
    assert code == 130 and "relaycomp: interrupted" in stderr, stderr


@pytest.mark.slow
def test_the_emulated_device_reports_its_server_dying(tracker, tmp_path):
    """An aarch64 library cut to half its size crashes the session that loads it, which ends
    TVM's server loop: emulate-device must say so and exit 1, not 0 in silence. (relaycomp's
    own ``run --rpc`` refuses such a file before sending it: a plain TVM client sends it.)"""
    from models import conv_net
    from tvm import rpc

    from relaycomp.compiler.build import CompileConfig, compile_model

    artifact = compile_model(conv_net(), tmp_path / "model.so",
                             CompileConfig(target="raspberry-pi-4"))
    data = artifact.path.read_bytes()
    library = tmp_path / "broken.so"
    library.write_bytes(data[:len(data) // 2])
    device = _start("emulate-device", "--rpc", tracker, "--key", "signals")
    try:
        children = _wait_for_children(device, ("qemu-aarch64",), timeout=300)
        wait_for_device(tracker, "signals", timeout=300)
        host, port = tracker.split(":")
        session = rpc.connect_tracker(host, int(port)).request("signals", session_timeout=60)
        session.upload(str(library))
        with pytest.raises(Exception):  # noqa: B017 - the remote load fails, any RPC error
            session.load_module("broken.so")
        _, stderr = device.communicate(timeout=120)
    finally:
        try:
            os.killpg(device.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert device.returncode == 1, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("relaycomp: ")]
    assert lines and lines[-1].startswith("relaycomp: error: the emulated aarch64 device's RPC "
                                          "server stopped"), stderr
    assert not _alive(children)
