"""Shared test helpers: numerics against onnxruntime, op counts, running the CLI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import onnx
import onnxruntime

import relaycomp
from relaycomp.runtime.reference import compare


def ort_outputs(model: onnx.ModelProto, inputs: dict) -> dict[str, np.ndarray]:
    """onnxruntime's outputs, keyed by output name."""
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    return dict(zip(names, session.run(names, inputs)))


def assert_matches_ort(model: onnx.ModelProto, inputs: dict, tmp_path, *, target: str = "host",
                       rtol: float = 1e-3) -> dict[str, np.ndarray]:
    """Compile ``model`` for the shapes of ``inputs``, run it, and compare with onnxruntime.

    The error of each output, relative to the reference's largest magnitude, must be ≤ ``rtol``;
    output names and shapes must match exactly. Returns relaycomp's outputs.
    """
    shapes = {name: array.shape for name, array in inputs.items()}
    artifact = relaycomp.compile(model, tmp_path / "model.so", target=target, inputs=shapes)
    actual = relaycomp.load(artifact.path).run(inputs)
    expected = ort_outputs(model, inputs)
    assert list(actual) == list(expected), "output names differ from the ONNX graph's"
    for name in expected:
        assert actual[name].shape == expected[name].shape, f"{name}: shape differs"
    errors = compare(actual, expected)
    worst = {name: e["max_rel"] for name, e in errors.items() if e["max_rel"] > rtol}
    assert not worst, f"relative error above {rtol}: {worst}"
    return actual


def op_counts(model: onnx.ModelProto) -> Counter:
    """ONNX op type → number of nodes."""
    return Counter(node.op_type for node in model.graph.node)


def run_cli(*args: str, cwd=None, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``relaycomp ARGS`` in a fresh interpreter, as a user would; captures text output.

    ``env`` adds to (or overrides) this process's environment for the run."""
    return subprocess.run([sys.executable, "-m", "relaycomp.cli", *map(str, args)],
                          check=False, capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **env} if env else None, timeout=timeout)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def rpc_tracker() -> Iterator[str]:
    """A TVM RPC tracker on loopback for the duration of the block; yields "127.0.0.1:PORT"."""
    port = free_port()
    tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host",
                                "127.0.0.1", "--port", str(port), "--port-end", str(port + 1)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # its own group: it forks a worker
    try:
        wait_for_port(port)
        yield f"127.0.0.1:{port}"
    finally:
        kill_group(tracker)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a process started with its own session, and the children it forked."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


def wait_for_port(port: int, timeout: float = 30) -> None:
    """Until something listens on ``port`` of 127.0.0.1 (at most ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on port {port}")


def wait_for_device(tracker: str, key: str, count: int = 1, timeout: float = 60) -> None:
    """Return once the tracker lists ``count`` servers under ``key``."""
    from tvm import rpc

    host, port = tracker.split(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue = rpc.connect_tracker(host, int(port)).summary()["queue_info"].get(key, {})
        if queue.get("free", 0) + queue.get("pending", 0) >= count:
            return
        time.sleep(0.5)
    raise RuntimeError(f"no server registered under '{key}' at {tracker}")


def build_scheduled(mod, target):
    """``mod`` (Relax, before legalization) built for ``target`` through TVM's CPU legalization,
    relaycomp's ``schedule_cpu_loops`` and TVM's lowering: the kernels as the schedule makes
    them, without the rest of relaycomp's pipeline."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from relaycomp.passes.schedule_cpu_loops import schedule_cpu_loops

    with target:
        mod = tvm.transform.Sequential(cpu.legalize_passes(target) + [schedule_cpu_loops(target)]
                                       + cpu.dataflow_lower_passes(target)
                                       + cpu.finalize_passes(target))(mod)
    return tvm.compile(mod, target, relax_pipeline=None)


def scalarized_loops(mod) -> list[str]:
    """The loops of ``mod`` (scheduled TIR) that TVM's ``VectorizeLoop`` gave up on and ran a
    lane at a time (it renames such a loop's variable ``*_s``): none, for a vector kernel."""
    import re

    import tvm
    from tvm import s_tir, tirx

    lowered = tvm.ir.transform.Sequential([
        s_tir.transform.LowerInitBlock(), s_tir.transform.ConvertBlocksToOpaque(),
        s_tir.transform.LowerOpaqueBlock(), tirx.transform.FlattenBuffer(),
        s_tir.transform.StmtSimplify(), tirx.transform.VectorizeLoop(True)])(mod)
    return re.findall(r"for (\w+_s) in", lowered.script())
