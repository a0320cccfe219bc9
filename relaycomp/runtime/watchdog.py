"""A watchdog on the link to an RPC device: TVM's RPC client waits for an answer forever (its
socket has no timeout), so the session goes through a loopback relay that closes the link when
the link stays silent for too long while the client waits on the device. The client's blocked
call then fails at once with a closed connection, reported as the device not answering.

::

    with ReplyWatchdog(("10.0.0.7", 9090), reply_timeout=60) as relay:
        session = tvm.rpc.connect("127.0.0.1", relay.port, key)
        with relay.waiting():        # a stalled or dead device: an error within ~60 s
            session.upload("model.so")
    relay.outcome()                  # "expired" when the watchdog closed the link

The caller says when it waits (:meth:`ReplyWatchdog.waiting`) rather than the relay guessing
from the bytes: some of TVM's RPC messages (freeing a remote handle) get no answer at all.

The relay runs in its own small process (this file run as a script, standard library only): a
remote call holds Python's GIL for as long as it waits, so a relay thread in the calling process
could never forward the answer. The relay exits when its parent closes its stdin (or dies).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import subprocess
import sys
import time
from typing import Self

CHUNK = 1 << 16
EXPIRED, DEVICE_CLOSED, DONE = "expired", "device-closed", "done"


class ReplyWatchdog:
    """Relays one TCP connection between a local client and ``device`` ("host", port).

    Inside :meth:`waiting`, the link must carry some bytes (either way) at least every
    ``reply_timeout`` seconds, else both ends are closed (:meth:`outcome` then says
    ``"expired"``). Outside it the link may idle forever. Listens on 127.0.0.1.
    """

    def __init__(self, device: tuple[str, int], reply_timeout: float):
        self.device, self.reply_timeout = device, float(reply_timeout)
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self._outcome: str | None = None

    def start(self) -> ReplyWatchdog:
        self.process = subprocess.Popen(
            [sys.executable, "-S", os.path.abspath(__file__), self.device[0],
             str(self.device[1]), repr(self.reply_timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline().split()
        if len(line) != 2 or line[0] != "listening":
            self.close()
            raise OSError("the RPC watchdog did not start")
        self.port = int(line[1])
        return self

    @contextlib.contextmanager
    def waiting(self):
        """The block waits on the device: its silence counts against ``reply_timeout``."""
        self._tell("busy")
        try:
            yield
        finally:
            self._tell("idle")

    def _tell(self, state: str) -> None:
        try:
            self.process.stdin.write(state + "\n")
            self.process.stdin.flush()
        except (OSError, ValueError):  # the relay has ended: outcome() says how
            pass

    def outcome(self, wait: float = 2.0) -> str | None:
        """How the link ended: "expired" (the device did not answer in time), "device-closed",
        "done"; None while it is still open (waits up to ``wait`` s for the relay to finish)."""
        if self._outcome is None and self.process is not None:
            try:
                self.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                return None
            self._outcome = self.process.stdout.read().strip() or DONE
        return self._outcome

    def close(self) -> None:
        """Stop relaying: the relay exits when its stdin closes."""
        if self.process is None:
            return
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.close()


class _Control:
    """The parent's "busy"/"idle" lines on a file descriptor; EOF means stop."""

    def __init__(self, fd: int):
        self.fd, self.busy, self.since, self._pending = fd, False, time.monotonic(), b""

    def read(self) -> bool:
        """Take what the parent wrote; False once it closed the pipe (or died)."""
        chunk = os.read(self.fd, 4096)
        if not chunk:
            return False
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        if lines:
            self.busy, self.since = lines[-1] == b"busy", time.monotonic()
        return True


def relay(device: tuple[str, int], reply_timeout: float, control_fd: int, report) -> None:
    """Accept one client on 127.0.0.1 and relay it to ``device`` (see :class:`ReplyWatchdog`);
    ``control_fd`` carries the parent's "busy"/"idle" lines, its EOF stops the relay; the
    outcome is written to ``report``."""
    control = _Control(control_fd)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        print("listening", listener.getsockname()[1], file=report, flush=True)
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(control.fd, selectors.EVENT_READ)
            while True:
                ready = [key.fileobj for key, _ in selector.select()]
                if listener in ready:
                    break
                if not control.read():
                    return
        client, _ = listener.accept()
    with client:
        try:
            remote = socket.create_connection(device, timeout=min(reply_timeout, 30))
        except OSError:
            print(DEVICE_CLOSED, file=report, flush=True)
            return
        with remote:
            print(_forward(client, remote, reply_timeout, control), file=report, flush=True)


def _forward(client: socket.socket, device: socket.socket, reply_timeout: float,
             control: _Control) -> str:
    for sock in (client, device):
        sock.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(client, selectors.EVENT_READ, device)
    selector.register(device, selectors.EVENT_READ, client)
    selector.register(control.fd, selectors.EVENT_READ, None)
    heard = time.monotonic()
    with selector:
        while True:
            if control.busy and time.monotonic() - max(heard, control.since) > reply_timeout:
                return EXPIRED  # the client waits and nothing moves
            for key, _ in selector.select(timeout=0.2):
                if key.data is None:
                    if not control.read():
                        return DONE
                    continue
                source, sink = key.fileobj, key.data
                try:
                    data = source.recv(CHUNK)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    return DEVICE_CLOSED if source is device else DONE
                if not _send_all(sink, data, reply_timeout):
                    return EXPIRED if sink is device else DONE
                heard = time.monotonic()


def _send_all(sock: socket.socket, data: bytes, timeout: float) -> bool:
    """Send everything, the peer reading within ``timeout`` s (False: it stopped or left)."""
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    while view:
        try:
            sent = sock.send(view)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return False
        if sent:
            view, deadline = view[sent:], time.monotonic() + timeout
        elif time.monotonic() > deadline:
            return False
        else:
            time.sleep(0.002)
    return True


if __name__ == "__main__":
    relay((sys.argv[1], int(sys.argv[2])), float(sys.argv[3]), sys.stdin.fileno(), sys.stdout)
