"""Measuring kernels: the builder and runner (local or through a TVM RPC tracker), the heuristic
baseline of each task, and the progress bar (tqdm) updated after every measured batch.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import cloudpickle
import tvm
from tqdm import tqdm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

from relaycomp import ir
from relaycomp.errors import TuningError
from relaycomp.rewrite import float_bits
from relaycomp.runtime.tracker import Device, count_devices
from relaycomp.schedules.cpu import bf16_round
from relaycomp.schedules.cpu.bf16_round import register_op as register_bf16_rounding
from relaycomp.tune.db import FAILED_SECONDS

BUILD_TIMEOUT_SECONDS = 60


@derived_object
class PooledBuilder(ms.builder.PyBuilder):
    """MetaSchedule's LocalBuilder, but its worker processes live for the whole session.

    The stock builder starts a fresh pool for every batch (each worker imports TVM: ~10 s on a
    busy 2-core machine, often more than the build timeout); this one restarts its pool only
    every ``batches_per_pool`` batches, which keeps the workers' slow memory growth in check.
    Its workers build with :func:`build_kernel`, which skips the stock build's 30 s import.
    """

    def __init__(self, max_workers: int | None = None, timeout_sec: float = BUILD_TIMEOUT_SECONDS,
                 batches_per_pool: int = 16, export: Export | None = None):
        super().__init__()
        self.export = export
        self.max_workers = max_workers or os.cpu_count() or 1
        self.timeout_sec = timeout_sec
        self.batches_per_pool = batches_per_pool
        self._pool = None
        self._batches = 0

    def build(self, build_inputs):
        """Build each input in the pool; a timeout or exception becomes that input's error."""
        if self._pool is None or self._batches >= self.batches_per_pool:
            self.close()
            # The workers get this module's functions by value: importing it by name would
            # import the relaycomp package, whose passes import tvm.s_tir.tensor_intrin. So
            # do the modules their initializer needs to register relaycomp's TIR op.
            for module in (sys.modules[__name__], bf16_round, float_bits):
                cloudpickle.register_pickle_by_value(module)
            self._pool = PopenPoolExecutor(max_workers=self.max_workers, timeout=self.timeout_sec,
                                           initializer=_warm_up_builder)
        self._batches += 1
        worker, serialize = ir.local_builder_worker()
        jobs = [(build_kernel, self.export, b.mod, b.target, serialize(b.params))
                for b in build_inputs]
        results = []
        for outcome in self._pool.map_with_error_catching(lambda job: worker(*job), jobs):
            if outcome.status == StatusKind.COMPLETE:
                results.append(ms.builder.BuilderResult(outcome.value, None))
            elif outcome.status == StatusKind.TIMEOUT:
                results.append(ms.builder.BuilderResult(
                    None, f"build timed out after {self.timeout_sec} s"))
            else:
                results.append(ms.builder.BuilderResult(None, f"build failed: {outcome.value}"))
        return results

    def close(self) -> None:
        """Stop the worker processes."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
            self._batches = 0


def _warm_up_builder() -> None:
    """Pay a worker's imports before its first build (the initializer has no timeout), and
    register the TIR op of relaycomp's own that bf16 kernels call (``bf16_round``): the
    candidates sent to the worker are unpickled against it."""
    import tvm.driver
    import tvm.s_tir.transform  # noqa: F401

    # the function itself, not ``bf16_round.register_op``: cloudpickle pickles a module by
    # reference, and importing it here would import the relaycomp package
    register_bf16_rounding()


def build_kernel(mod: tvm.IRModule, target, _params) -> tvm.runtime.Module:
    """MetaSchedule's default build of a scheduled candidate, without its import of
    ``tvm.s_tir.tensor_intrin``: that parses hundreds of TVMScript kernels (about 30 s of CPU
    per worker) only to register tensor intrinsics, which the schedule - applied in the tuning
    process, which has them - has already inlined into the candidate's TIR.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    # A weight repack is folded at compile time in a build: measure the kernel without it.
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


@dataclass(frozen=True)
class Export:
    """Links a built candidate into a shared library with a given C compiler: the target's
    cross compiler when the device is not this machine (e.g. ``aarch64-linux-gnu-gcc``)."""

    compiler: str
    options: tuple[str, ...] = ()

    def __call__(self, rt_mod: tvm.runtime.Module) -> str:
        """Export ``rt_mod`` to a fresh temporary folder; returns the library's path."""
        from tvm.support import cc

        def link(output, objects, options=None):
            cc.create_shared(output, objects, options=[*self.options, *(options or [])],
                             cc=self.compiler)

        link.output_format = "so"
        path = os.path.join(tempfile.mkdtemp(prefix="tvm-tmp-"), "tvm_tmp_mod.so")
        rt_mod.export_library(path, fcompile=link)
        return path


def make_builder(spec=None) -> ms.builder.Builder:
    """Compiles candidates in long-lived worker processes on this machine, linked by ``spec``'s
    toolchain (a relaycomp TargetSpec; None or the host's compiler: TVM's default export)."""
    toolchain = getattr(spec, "toolchain", None)
    if toolchain is None or toolchain.compiler is None:
        return PooledBuilder()
    return PooledBuilder(export=Export(toolchain.find(), tuple(toolchain.options)))


def make_runner(device: Device, kind: str, repeat: int = 1,
                runs_here: bool = True) -> ms.runner.Runner:
    """A runner for ``device`` timing ``repeat`` times per candidate (each at least 50 ms of
    calls); an unreachable tracker, a key without devices or, without a tracker, a target that
    cannot run here (``runs_here`` False) is an error."""
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=repeat, min_repeat_ms=50,
                                          enable_cpu_cache_flush=False)
    if device.rpc is None:
        if kind == "cuda" and not tvm.cuda(0).exist:
            raise TuningError("no CUDA GPU on this machine to measure the tuning candidates on",
                              hint="tune on the GPU machine, or measure there over "
                                   "--rpc HOST:PORT --key KEY")
        if not runs_here:
            raise TuningError("the target's kernels cannot run on this machine to be measured",
                              hint="measure them on the device: --rpc HOST:PORT --key KEY (a "
                                   "TVM RPC tracker the device's server is registered at)")
        return ms.runner.LocalRunner(timeout_sec=device.timeout_sec, evaluator_config=evaluator)
    host, port = device.tracker
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=device.key,
                                 session_timeout_sec=device.timeout_sec)
    servers = count_devices(config)
    return WatchedRunner(ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator,
                                             max_workers=servers), device)


class DeviceLostError(TuningError):
    """The RPC device stopped answering in the middle of a tuning session."""


@derived_object
class WatchedRunner(ms.runner.PyRunner):
    """An RPC runner that notices when the device is gone.

    Every candidate of a batch failing to run (each waits at most the device's timeout) is
    followed by a probe of the device (:func:`relaycomp.runtime.remote.probe_device`); if it
    does not answer either, :class:`DeviceLostError` ends the batch and ``lost`` says why (an
    error raised here reaches the tuner through MetaSchedule's C++ as a plain RuntimeError).
    """

    def __init__(self, inner: ms.runner.Runner, device: Device):
        super().__init__()
        self.inner, self.device = inner, device
        self.lost: str | None = None

    def run(self, runner_inputs):
        """Run the batch on the device; raises DeviceLostError if the device is gone."""
        futures = self.inner.run(runner_inputs)
        results = [future.result() for future in futures]
        if results and all(r.error_msg is not None or not r.run_secs for r in results):
            from relaycomp.runtime.remote import probe_device

            reason = probe_device(self.device)
            if reason is not None:
                self.lost = (f"{reason} (every candidate of the last batch failed to run on "
                             "it); the records measured so far are kept: tune again to continue")
                raise DeviceLostError(self.lost, hint="is the device's RPC server running? "
                                                      "(--rpc-timeout SECONDS waits longer)")
        return futures


def measure_modules(mods: Sequence[tvm.IRModule], target, builder, runner) -> list[float]:
    """Build and run each (already scheduled) single-kernel module: its best repeat in seconds,
    or FAILED_SECONDS. The best, not the mean: on a shared machine the noise only adds time."""
    return run_built(build_modules(mods, target, builder), target, runner)


@dataclass(frozen=True)
class Built:
    """A kernel module built by the builder: its library (None if the build failed)."""

    mod: tvm.IRModule
    artifact_path: str | None


def build_modules(mods: Sequence[tvm.IRModule], target, builder) -> list[Built]:
    """Build each (already scheduled) single-kernel module once, to run as often as wanted."""
    results = builder.build([ms.builder.BuilderInput(mod, target) for mod in mods])
    return [Built(mod, r.artifact_path if r.error_msg is None else None)
            for mod, r in zip(mods, results)]


def run_built(built: Sequence[Built], target, runner) -> list[float]:
    """Run each built kernel: its best repeat in seconds, or FAILED_SECONDS."""
    seconds = [FAILED_SECONDS] * len(built)
    runnable = [(i, b) for i, b in enumerate(built) if b.artifact_path is not None]
    runner_inputs = [
        ms.runner.RunnerInput(b.artifact_path, _device_type(target),
                              # the builder strips a weight-repacking block, as for tuned
                              # candidates: measure with the packed weight layout
                              ms.arg_info.ArgInfo.from_entry_func(b.mod, remove_preproc=True))
        for _, b in runnable]
    futures = runner.run(runner_inputs) if runner_inputs else []
    for (i, _), future in zip(runnable, futures):
        result = future.result()
        if result.error_msg is None and result.run_secs:
            seconds[i] = min(float(v) for v in result.run_secs)
    return seconds


def _device_type(target) -> str:
    return "cpu" if target.kind.name == "llvm" else target.kind.name


@dataclass
class Progress:
    """Live progress over a whole tuning session: trials, best per task and for the model, ETA.

    A tqdm bar on stderr (``stream``). Its numbers are search-time measurements, the same
    ones the final table shows in its "search best" column: a candidate's mean run time and the
    heuristic schedule's baseline. The table's "tuned ms" comes from the paired check afterwards
    (both schedules built as they ship and timed alternately), which decides what is applied.
    """

    total_trials: int
    weights: dict[str, int]        # task name -> occurrences in the model
    heuristic_ms: dict[str, float]  # task name -> the heuristic schedule's time
    stream: object = None
    enabled: bool = True
    done: int = 0
    failed: int = 0
    best_ms: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    bar: object = None
    curve: list[dict] = field(default_factory=list)  # one point per batch (for --plot)

    def close(self) -> None:
        """End the bar (its last state stays on screen)."""
        if self.bar is not None:
            self.bar.close()

    def model_ms(self) -> float:
        """Estimated model latency: each kernel at its best so far, times its occurrences."""
        return sum(weight * min(self.heuristic_ms[name], self.best_ms.get(name, math.inf))
                   for name, weight in self.weights.items())

    def batch(self, task_name: str, task_done: int, task_total: int, best_ms: float,
              baseline_ms: float, measured: int, failed: int) -> None:
        """Record one measured batch and print the progress line."""
        if not measured:
            return
        self.done += measured
        self.failed += failed
        self.best_ms[task_name] = min(self.best_ms.get(task_name, math.inf), best_ms)
        self.curve.append({"trials": self.done, "task": task_name,
                           "best_ms": self.best_ms[task_name]
                           if self.best_ms[task_name] < FAILED_SECONDS else None,
                           "heuristic_ms": baseline_ms, "model_ms": self.model_ms()})
        if failed and failed == measured:
            warnings.warn(f"all {measured} candidates of {task_name} failed to build or run "
                          "(device lost?); tuning goes on with what it has", stacklevel=2)
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = tqdm(total=self.total_trials, desc="tuning", unit="trial",
                            file=self.stream or sys.stderr, dynamic_ncols=True)
        best = f"{best_ms:.4f} ms" if best_ms < FAILED_SECONDS else "none yet"
        self.bar.set_postfix_str(f"{task_name[:32]}: {task_done}/{task_total}, search best "
                                 f"{best} vs heuristic {baseline_ms:.4f} ms | model "
                                 f"~{self.model_ms():.3f} ms", refresh=False)
        self.bar.update(measured)


def progress_callback(progress: Progress, task_name: str, task_total: int, baseline_ms: float):
    """A MetaSchedule measure callback feeding ``progress`` after each batch of one task."""
    state = {"done": 0, "best": float("inf")}

    @derived_object
    class _Callback(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results):
            failed = 0
            for built, ran in zip(builder_results, runner_results):
                if built.error_msg is not None or ran.error_msg is not None or not ran.run_secs:
                    failed += 1
                    continue
                values = [float(v) for v in ran.run_secs]
                state["best"] = min(state["best"], sum(values) / len(values))
            state["done"] += len(runner_results)
            progress.batch(task_name, state["done"], task_total, state["best"] * 1e3,
                           baseline_ms, len(runner_results), failed)

    return _Callback()
