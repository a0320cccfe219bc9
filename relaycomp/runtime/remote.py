"""Run an artifact on a remote device, through a TVM RPC tracker.

::

    model = relaycomp.runtime.remote.load_remote("model.so", rpc="tracker:9190", key="rpi4")
    outputs = model.run({"x": x})          # the same interface as relaycomp.load(...)
    print(model.time({"x": x}).median_ms)  # timed on the device, the network not included

``relaycomp run model.so --rpc HOST:PORT --key KEY [--repeat N]`` does the same from the command
line. The device runs a stock TVM RPC server (``python -m tvm.exec.rpc_server --tracker
HOST:PORT --key KEY``) or any runtime speaking TVM's RPC protocol; the artifact, a shared library
built for that device, is uploaded, loaded there and run in its Relax VM.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

import numpy as np
import tvm
from tvm import relax

from relaycomp import ir
from relaycomp.errors import RelaycompError, last_line
from relaycomp.runtime.local import LoadedModel, Timing, read_artifact
from relaycomp.runtime.tracker import Device, count_devices, request_server
from relaycomp.runtime.watchdog import DEVICE_CLOSED, EXPIRED, ReplyWatchdog

SESSION_TIMEOUT_SECONDS = 600
REPLY_TIMEOUT_SECONDS = 300  # one request (upload, load, a run, a timing) on a slow board


class RemoteModel(LoadedModel):
    """A compiled model loaded on a device reached through an RPC tracker (see the module doc).

    CPU kernels run on ``threads`` threads of the device (default: the target's ``num-cores``).
    Every wait is bounded: the tracker answers within seconds, a device must become free within
    ``reply_timeout`` seconds and answer each request within as long (a
    :class:`~relaycomp.runtime.watchdog.ReplyWatchdog` on the link), else a ``RelaycompError``
    says what the device was doing when it stalled or left.
    """

    def __init__(self, path: str | os.PathLike, rpc: str, key: str, threads: int | None = None,
                 session_timeout: int = SESSION_TIMEOUT_SECONDS,
                 reply_timeout: float = REPLY_TIMEOUT_SECONDS):
        from tvm import rpc as tvm_rpc

        self.path, self.manifest, self.target = read_artifact(path)
        self.key, self.reply_timeout = key, reply_timeout
        device = Device(rpc, key, timeout_sec=session_timeout)
        config = tvm.s_tir.meta_schedule.runner.RPCConfig(
            tracker_host=device.tracker[0], tracker_port=device.tracker[1], tracker_key=key,
            session_timeout_sec=session_timeout)
        count_devices(config)  # a clear error for an unreachable tracker or an unknown key
        host, port, match_key = request_server(*device.tracker, key, reply_timeout,
                                               error=RelaycompError)
        self._watchdog = ReplyWatchdog((host, port), reply_timeout).start()
        with self._on_device("connecting"):
            self.session = tvm_rpc.connect("127.0.0.1", self._watchdog.port, match_key,
                                           session_timeout)
        try:
            with self._on_device(f"uploading {self.path.name}"):
                self.session.upload(str(self.path))
            with self._on_device(f"loading {self.path.name}"):
                library = self.session.load_module(self.path.name)
        except _DeviceCallError as err:
            raise RelaycompError(f"cannot load {self.path.name} on the device '{key}': "
                                 f"{err.message_tail}",
                                 hint="is the artifact built for the device's target?") from None
        with self._on_device("starting the model"):
            self._device = self.session.device(self._device_kind(), 0)
            if self.target.kind == "llvm":
                self._configure_threads(threads or self.target.target.get("num-cores"))
            self._vm = relax.VirtualMachine(library, self._device)

    @contextlib.contextmanager
    def _on_device(self, doing: str):
        """Turn any failure of the remote calls inside into one clear ``RelaycompError``."""
        try:
            with self._watchdog.waiting():
                yield
        except RelaycompError:
            raise
        except Exception as err:  # noqa: BLE001 - RPC errors come in many types
            outcome = self._watchdog.outcome(wait=0.5)
            if outcome == EXPIRED:
                message = (f"the device '{self.key}' did not answer within "
                           f"{self.reply_timeout:g} s while {doing}")
            elif outcome == DEVICE_CLOSED:
                message = f"the device '{self.key}' closed the connection while {doing}"
            else:
                raise _DeviceCallError(f"{doing} failed on the device '{self.key}': "
                                       f"{last_line(err)}", last_line(err)) from None
            raise RelaycompError(message, hint="is the device's RPC server still running? "
                                               "(--rpc-timeout SECONDS waits longer)") from None

    def close(self) -> None:
        """End the session and its watchdog."""
        self.__dict__.pop("_vm", None)
        self.__dict__.pop("session", None)
        self._watchdog.close()

    def _configure_threads(self, threads: int | None) -> None:
        if not threads:
            return
        try:  # (affinity mode 0: default, thread count) in the server process
            self.session.get_function("runtime.config_threadpool")(0, int(threads))
        except Exception:  # a runtime without it keeps its own pool size (a lost link: below)
            if self._watchdog.outcome(wait=0.5) is not None:  # the link is gone
                raise
            return

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on the device; returns ``{output name: array}`` copied back here."""
        checked = self._check_inputs(inputs)
        with self._on_device("running the model"):
            self._set_inputs(checked)
            self._vm.invoke_stateful("main")
            results = ir.to_numpy(self._vm.get_outputs("main"))
        return {spec.name: value for spec, value in zip(self.manifest.outputs, results)}

    def time(self, inputs: Mapping[str, np.ndarray], repeat: int = 20,
             warmup: int = 3) -> Timing:
        """Latency of ``main``, timed on the device by TVM's time evaluator (no copies timed)."""
        checked = self._check_inputs(inputs)
        with self._on_device("timing the model"):
            self._set_inputs(checked)
            for _ in range(warmup):
                self._vm.invoke_stateful("main")
            timer = self._vm.time_evaluator("invoke_stateful", self._device, number=1,
                                            repeat=repeat)
            samples = [float(s) * 1e3 for s in timer("main").results]
        return Timing(float(np.median(samples)), float(np.mean(samples)), min(samples), repeat)

    def _set_inputs(self, checked: list[np.ndarray]) -> None:
        tensors = [ir.to_device(a, self._device) for a in checked]
        self._vm.set_input("main", *tensors)


class _DeviceCallError(RelaycompError):
    """A remote call failed while the link was fine (the device refused or raised)."""

    def __init__(self, message: str, tail: str):
        super().__init__(message)
        self.message_tail = tail


def probe_device(device: Device) -> str | None:
    """Whether a device under ``device.key`` answers now: None if one is free and answers a
    trivial call within ``device.timeout_sec`` seconds, else why not (for an error message)."""
    from tvm import rpc as tvm_rpc

    try:
        host, port, match_key = request_server(*device.tracker, device.key, device.timeout_sec)
    except RelaycompError as err:
        return str(err)
    with ReplyWatchdog((host, port), device.timeout_sec) as watchdog:
        try:
            with watchdog.waiting():
                session = tvm_rpc.connect("127.0.0.1", watchdog.port, match_key)
                session.cpu(0).exist  # noqa: B018 - a round trip to the device
                del session
        except Exception as err:  # noqa: BLE001 - RPC errors come in many types
            if watchdog.outcome(wait=0.5) == EXPIRED:
                return (f"the device '{device.key}' did not answer within "
                        f"{device.timeout_sec:g} s")
            return f"the device '{device.key}' cannot be reached: {last_line(err)}"
    return None


def load_remote(path: str | os.PathLike, rpc: str, key: str, threads: int | None = None,
                reply_timeout: float = REPLY_TIMEOUT_SECONDS) -> RemoteModel:
    """Upload ``path`` to a device under ``key`` at the tracker ``rpc`` and load it there;
    ``reply_timeout`` bounds every wait for the device (see :class:`RemoteModel`)."""
    return RemoteModel(path, rpc, key, threads, reply_timeout=reply_timeout)
