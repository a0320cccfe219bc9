"""Devices at a TVM RPC tracker: where a device is (``Device``), and asking the tracker what it
has, with a clear error at once when it cannot be reached."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from relaycomp.errors import RelaycompError, TuningError, last_line

RUN_TIMEOUT_SECONDS = 30
HANDSHAKE_SECONDS = 5  # a tracker answers its handshake at once; a stalled one never does


@dataclass(frozen=True)
class Device:
    """Where candidates run: this machine, or devices under ``key`` at an RPC tracker."""

    rpc: str | None = None      # "HOST:PORT" of a TVM RPC tracker
    key: str | None = None
    timeout_sec: int = RUN_TIMEOUT_SECONDS

    def __post_init__(self):
        if (self.rpc is None) != (self.key is None):
            raise TuningError("--rpc HOST:PORT and --key KEY go together",
                              hint="give both to tune on a device, neither to tune here")
        if self.rpc is not None:
            host, _, port = self.rpc.rpartition(":")
            if not host or not port.isdigit():
                raise TuningError(f"--rpc expects HOST:PORT, got '{self.rpc}'")

    @property
    def tracker(self) -> tuple[str, int]:
        """(host, port) of the tracker."""
        host, _, port = self.rpc.rpartition(":")
        return host, int(port)


TRACKER_HINT = "start one: python -m tvm.exec.rpc_tracker --host 127.0.0.1 --port 9190"


def tracker_summary(host: str, port: int, error: type[RelaycompError] = TuningError) -> dict:
    """The summary of the TVM RPC tracker at ``host:port`` (``queue_info``: key -> free/pending
    servers); an unreachable or silent tracker raises ``error`` within ``HANDSHAKE_SECONDS``,
    where TVM's own client would retry for its whole session timeout, or wait forever."""
    from tvm.rpc.base import TrackerCode, recvjson, sendjson

    try:
        with _tracker_socket(host, port) as sock:
            sendjson(sock, [TrackerCode.SUMMARY])
            value = recvjson(sock)
        if not isinstance(value, list) or value[0] != TrackerCode.SUCCESS:
            raise OSError(f"the tracker answered {str(value)[:80]}")
        return value[1]
    except Exception as err:  # noqa: BLE001 - connection errors come in many types
        raise error(f"cannot reach the RPC tracker at {host}:{port}: {last_line(err)}",
                    hint=TRACKER_HINT) from None


def request_server(host: str, port: int, key: str, timeout: float,
                   error: type[RelaycompError] = TuningError) -> tuple[str, int, str]:
    """Ask the tracker at ``host:port`` for a free device under ``key``: its (host, port,
    match key) for ``tvm.rpc.connect``. Waits at most ``timeout`` seconds for one to be free
    (TVM's ``TrackerSession.request`` waits forever)."""
    from tvm.rpc.base import TrackerCode, recvjson, sendjson

    try:
        with _tracker_socket(host, port) as sock:
            sendjson(sock, [TrackerCode.REQUEST, key, "", 1])
            sock.settimeout(timeout)
            value = recvjson(sock)
    except TimeoutError:
        raise error(f"no device under key '{key}' at the tracker {host}:{port} became free "
                    f"within {timeout:g} s",
                    hint="is the device busy with another session, or did it stop?") from None
    except Exception as err:  # noqa: BLE001 - connection errors come in many types
        raise error(f"cannot reach the RPC tracker at {host}:{port}: {last_line(err)}",
                    hint=TRACKER_HINT) from None
    if not isinstance(value, list) or value[0] != TrackerCode.SUCCESS:
        raise error(f"the RPC tracker at {host}:{port} refused a device under '{key}': "
                    f"{str(value)[:80]}")
    server_host, server_port, match_key = value[1]
    return str(server_host), int(server_port), str(match_key)


def _tracker_socket(host: str, port: int, timeout: float = HANDSHAKE_SECONDS) -> socket.socket:
    """A socket to the tracker at ``host:port``, its protocol's magic number exchanged, with
    ``timeout`` on every send and receive; anything else listening there raises ``OSError``."""
    from tvm.rpc.base import RPC_TRACKER_MAGIC

    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.settimeout(timeout)
        sock.sendall(struct.pack("<i", RPC_TRACKER_MAGIC))
        answer = b""
        while len(answer) < 4:
            chunk = sock.recv(4 - len(answer))
            if not chunk:
                raise OSError("the connection closed during the tracker handshake")
            answer += chunk
        if struct.unpack("<i", answer)[0] != RPC_TRACKER_MAGIC:
            raise OSError("what answers there is not a TVM RPC tracker")
    except BaseException:
        sock.close()
        raise
    return sock


def count_devices(config) -> int:
    """Devices free or busy under the key; raises TuningError when there are none."""
    summary = tracker_summary(config.tracker_host, config.tracker_port)
    queue = summary.get("queue_info", {}).get(config.tracker_key, {})
    count = int(queue.get("free", 0)) + int(queue.get("pending", 0))
    servers = [s for s in summary.get("server_info", [])
               if str(s.get("key", "")).split(":")[-1] == config.tracker_key]
    count = max(count, len(servers))
    if count == 0:
        known = sorted(summary.get("queue_info", {})) or ["none"]
        raise TuningError(f"no device is registered under key '{config.tracker_key}' at the "
                          f"tracker {config.tracker_host}:{config.tracker_port}",
                          hint=f"keys the tracker knows: {', '.join(known)}")
    return count
