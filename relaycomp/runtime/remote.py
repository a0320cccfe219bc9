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

import os
from collections.abc import Mapping

import numpy as np
import tvm
from tvm import relax

from relaycomp import ir
from relaycomp.errors import RelaycompError, last_line
from relaycomp.runtime.local import LoadedModel, Timing, read_artifact
from relaycomp.runtime.tracker import Device, count_devices

SESSION_TIMEOUT_SECONDS = 600


class RemoteModel(LoadedModel):
    """A compiled model loaded on a device reached through an RPC tracker (see the module doc).

    CPU kernels run on ``threads`` threads of the device (default: the target's ``num-cores``).
    """

    def __init__(self, path: str | os.PathLike, rpc: str, key: str, threads: int | None = None,
                 session_timeout: int = SESSION_TIMEOUT_SECONDS):
        self.path, self.manifest, self.target = read_artifact(path)
        device = Device(rpc, key, timeout_sec=session_timeout)
        config = tvm.s_tir.meta_schedule.runner.RPCConfig(
            tracker_host=device.tracker[0], tracker_port=device.tracker[1], tracker_key=key,
            session_timeout_sec=session_timeout)
        count_devices(config)  # a clear error for an unreachable tracker or an unknown key
        try:
            self.session = config.connect_server()
            self.session.upload(str(self.path))
            library = self.session.load_module(self.path.name)
        except Exception as err:  # noqa: BLE001 - RPC errors come in many types
            raise RelaycompError(f"cannot load {self.path.name} on the device '{key}': "
                                 f"{last_line(err)}",
                                 hint="is the artifact built for the device's target?") from None
        self._device = self.session.device(self._device_kind(), 0)
        if self.target.kind == "llvm":
            self._configure_threads(threads or self.target.target.get("num-cores"))
        self._vm = relax.VirtualMachine(library, self._device)

    def _configure_threads(self, threads: int | None) -> None:
        if not threads:
            return
        try:  # (affinity mode 0: default, thread count) in the server process
            self.session.get_function("runtime.config_threadpool")(0, int(threads))
        except Exception:  # noqa: BLE001 - a runtime without it keeps its own pool size
            return

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on the device; returns ``{output name: array}`` copied back here."""
        self._set_inputs(inputs)
        self._vm.invoke_stateful("main")
        results = ir.to_numpy(self._vm.get_outputs("main"))
        return {spec.name: value for spec, value in zip(self.manifest.outputs, results)}

    def time(self, inputs: Mapping[str, np.ndarray], repeat: int = 20,
             warmup: int = 3) -> Timing:
        """Latency of ``main``, timed on the device by TVM's time evaluator (no copies timed)."""
        self._set_inputs(inputs)
        for _ in range(warmup):
            self._vm.invoke_stateful("main")
        timer = self._vm.time_evaluator("invoke_stateful", self._device, number=1, repeat=repeat)
        samples = [float(s) * 1e3 for s in timer("main").results]
        return Timing(float(np.median(samples)), float(np.mean(samples)), min(samples), repeat)

    def _set_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        tensors = [ir.to_device(a, self._device) for a in self._check_inputs(inputs)]
        self._vm.set_input("main", *tensors)


def load_remote(path: str | os.PathLike, rpc: str, key: str,
                threads: int | None = None) -> RemoteModel:
    """Upload ``path`` to a device under ``key`` at the tracker ``rpc`` and load it there."""
    return RemoteModel(path, rpc, key, threads)
