"""Fault injection on the RPC path: a device that stalls or dies in the middle of ``relaycomp run
--rpc`` or ``relaycomp tune --rpc`` ends the command with one ``relaycomp: error:`` line within
its timeout - never a hang - and a tuning session keeps every record it finished.

The device is a real TVM RPC server on loopback (``python -m tvm.exec.rpc_server``) behind
:class:`FaultyLink`: a relay registered at the tracker in the server's place, which forwards the
RPC sessions byte for byte and, once the server has sent ``after`` bytes in all, either stops
forwarding (``stall``: the sockets stay open, nothing answers) or closes everything and leaves
the tracker (``die``).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import Self

import numpy as np
import pytest
from helpers import (
    free_port,
    kill_group,
    ort_outputs,
    rpc_tracker,
    run_cli,
    wait_for_device,
    wait_for_port,
)
from models import conv_net, random_inputs

from relaycomp.compiler.build import CompileConfig, compile_model

KEY = "faulty"
BOUND_SECONDS = 60  # what a test allows for the command: its timeout plus start-up


class FaultyLink:
    """A device registered at ``tracker`` under ``key``: relays RPC sessions to a real server
    on loopback until the server has sent ``after`` bytes (then ``mode``: stall or die)."""

    def __init__(self, tracker: str, key: str, mode: str | None = None, after: int = 0):
        self.tracker = tracker.split(":")[0], int(tracker.split(":")[1])
        self.key, self.mode, self.after = key, mode, after
        self.sent = 0          # bytes the server sent through the link so far
        self.sessions = 0
        self.tripped = threading.Event()
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        port = free_port()
        self.server = subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port",
             str(port), "--port-end", str(port + 1), "--key", key],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.server_port = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._tracker = None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Self:
        wait_for_port(self.server_port)
        self._register()
        self._thread.start()
        wait_for_device(f"{self.tracker[0]}:{self.tracker[1]}", self.key)
        return self

    def __exit__(self, *_exc) -> None:
        self._closing.set()
        self._leave()
        for sock in self._sockets:
            sock.close()
        self._thread.join(timeout=10)
        kill_group(self.server)

    # -- the tracker's side: a server registering its address and a free slot ---------------
    def _register(self) -> None:
        from tvm.rpc.base import RPC_TRACKER_MAGIC, TrackerCode, recvjson, sendjson

        sock = socket.create_connection(self.tracker, timeout=10)
        sock.sendall(RPC_TRACKER_MAGIC.to_bytes(4, "little", signed=True))
        sock.recv(4)
        sendjson(sock, [TrackerCode.UPDATE_INFO,
                        {"key": f"server:{self.key}", "addr": ["127.0.0.1", self.port]}])
        assert recvjson(sock) == TrackerCode.SUCCESS
        self._tracker = sock
        self._offer()

    def _offer(self) -> None:
        """Put one free slot under the key (the tracker hands it to one client)."""
        from tvm.rpc.base import TrackerCode, recvjson, sendjson

        sendjson(self._tracker, [TrackerCode.PUT, self.key, (self.port, self.key), "127.0.0.1"])
        assert recvjson(self._tracker) == TrackerCode.SUCCESS

    def _leave(self) -> None:
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None
        self.listener.close()

    # -- the sessions ---------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.sessions += 1
            server = socket.create_connection(("127.0.0.1", self.server_port))
            self._sockets += [client, server]
            up = threading.Thread(target=self._pump, args=(client, server, False), daemon=True)
            up.start()
            self._pump(server, client, True)
            up.join(timeout=5)
            client.close()
            server.close()
            if self.tripped.is_set() and self.mode == "die":
                self._leave()
                return
            if not self._closing.is_set() and not self.tripped.is_set():
                self._offer()

    def _pump(self, source: socket.socket, sink: socket.socket, from_server: bool) -> None:
        while True:
            try:
                data = source.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                with _ignoring_errors():
                    sink.shutdown(socket.SHUT_WR)
                return
            if from_server and not self.tripped.is_set():
                room = self.after - self.sent
                if self.mode and room <= len(data):
                    data = data[:max(room, 0)]
                    self.tripped.set()
                self.sent += len(data)
            with _ignoring_errors():
                sink.sendall(data)
            if self.tripped.is_set():
                if self.mode == "stall":
                    self._closing.wait()  # nothing more goes through; the sockets stay open
                else:  # die: the device is gone, mid-answer
                    self.server.kill()
                    for sock in (source, sink):
                        with _ignoring_errors():
                            sock.shutdown(socket.SHUT_RDWR)
                return


class _ignoring_errors:
    def __enter__(self):
        return self

    def __exit__(self, kind, _value, _tb):
        return kind is not None and issubclass(kind, OSError)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    model = conv_net()
    folder = tmp_path_factory.mktemp("faults")
    built = compile_model(model, folder / "model.so", CompileConfig())
    inputs = random_inputs(model)
    np.savez(folder / "inputs.npz", **inputs)
    return built.path, folder / "inputs.npz", ort_outputs(model, inputs)


def _run_remote(artifact, tracker, key, tmp_path, *extra):
    path, inputs, _ = artifact
    started = time.monotonic()
    result = run_cli("run", path, "--inputs", inputs, "--outputs", tmp_path / "out.npz",
                     "--rpc", tracker, "--key", key, "--rpc-timeout", "3", *extra,
                     timeout=BOUND_SECONDS + 30)
    return result, time.monotonic() - started


def _one_error_line(result) -> str:
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("relaycomp: ")]
    assert len(lines) == 1 and lines[0].startswith("relaycomp: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def tracker():
    with rpc_tracker() as address:
        yield address


@pytest.fixture
def key():
    """A device key of the test's own: the shared tracker may still queue a request of an
    earlier test for its key (a client that timed out), which would take this test's device."""
    return f"{KEY}-{uuid.uuid4().hex[:8]}"


@pytest.mark.slow
def test_a_healthy_link_runs_like_onnxruntime(artifact, tracker, key, tmp_path):
    """The relay itself is transparent: the same command succeeds with the right numbers."""
    with FaultyLink(tracker, key):
        result, _ = _run_remote(artifact, tracker, key, tmp_path, "--repeat", "2")
    assert result.returncode == 0, result.stderr
    actual = np.load(tmp_path / "out.npz")
    for name, expected in artifact[2].items():
        np.testing.assert_allclose(actual[name], expected, rtol=1e-4, atol=1e-5)


# The server sends about 2000 bytes in a whole run: 30 is while connecting, 400 while loading
# the model, 1500 while timing it (the outputs are saved by then).
@pytest.mark.parametrize(("mode", "after"), [
    ("stall", 30), ("die", 400),
    pytest.param("stall", 1500, marks=pytest.mark.slow),
    pytest.param("die", 1500, marks=pytest.mark.slow)])
def test_a_device_failing_mid_run_is_one_error_line_within_the_timeout(artifact, tracker, key,
                                                                      tmp_path, mode, after):
    with FaultyLink(tracker, key, mode, after) as link:
        result, seconds = _run_remote(artifact, tracker, key, tmp_path, "--repeat", "2")
        assert link.tripped.is_set(), "the fault never fired: the test tests nothing"
    line = _one_error_line(result)
    assert f"the device '{key}'" in line
    assert ("did not answer within 3 s" if mode == "stall" else "closed the connection") in line
    assert seconds < BOUND_SECONDS
    if (tmp_path / "out.npz").exists():  # saved before the fault: whole, and right
        saved = np.load(tmp_path / "out.npz")
        for name, expected in artifact[2].items():
            np.testing.assert_allclose(saved[name], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_device_that_is_never_free_is_one_error_line(artifact, tracker, key, tmp_path):
    """The only device is held by another session: the request waits --rpc-timeout, no more."""
    with FaultyLink(tracker, key):
        from tvm import rpc

        host, port = tracker.split(":")
        busy = rpc.connect_tracker(host, int(port)).request(key)  # noqa: F841 - holds it
        result, seconds = _run_remote(artifact, tracker, key, tmp_path)
    line = _one_error_line(result)
    assert f"no device under key '{key}'" in line and "within 3 s" in line
    assert seconds < BOUND_SECONDS


def _tune(tracker: str, key: str, db, *extra):
    started = time.monotonic()
    result = run_cli("tune", "example:digits", "--trials", "8", "--trials-per-iter", "4",
                     "--tuning-db", db, "--rpc", tracker, "--key", key, "--rpc-timeout", "10",
                     "--quiet", *extra, timeout=600)
    return result, time.monotonic() - started


def _records(db) -> list[dict]:
    found = []
    for path in db.rglob("*.json"):
        for line in path.read_text().splitlines():
            if line.strip().startswith("["):
                found.append(json.loads(line))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stall", "die"])
def test_a_device_failing_mid_tune_is_one_error_line_and_keeps_the_records(tracker, key,
                                                                           tmp_path, mode):
    db = tmp_path / "db"
    with FaultyLink(tracker, key) as link:  # a healthy session first: some records
        first, _ = _tune(tracker, key, db)
    assert first.returncode == 0, first.stderr
    kept = len(_records(db))
    assert kept > 0 and link.sessions > 0
    after = link.sent // 4  # a quarter of what the device sent in a whole session: mid-tune
    key = f"{key}-again"  # the first link's device is gone from the tracker with it
    with FaultyLink(tracker, key, mode, after=after) as link:
        result, seconds = _tune(tracker, key, db, "--trials", "24")
        assert link.tripped.is_set(), "the fault never fired: the test tests nothing"
    line = _one_error_line(result)
    assert f"'{key}'" in line, line
    assert seconds < 300
    assert len(_records(db)) >= kept, "finished tuning records were lost"
