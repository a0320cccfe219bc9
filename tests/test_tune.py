"""Auto-tuning: tuned builds match onnxruntime, the database is reused, survives SIGKILL and
concurrent tuners, devices are reached over TVM RPC, and a lost device is not a crash.

Most tests share one tiny tuning session (``tuned``); the ones at the end start tuner processes
(killed, or two at once) or a TVM RPC tracker and server on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tvm
from helpers import (
    free_port,
    kill_group,
    ort_outputs,
    rpc_tracker,
    run_cli,
    wait_for_device,
)
from models import conv_net, mlp, mobilenet_style_net, random_inputs
from tvm.s_tir import meta_schedule as ms

import relaycomp
from relaycomp.compiler.build import CompileConfig, compile_model
from relaycomp.compiler.pipeline import default_stages, run_stages, split_before
from relaycomp.errors import TuningError
from relaycomp.frontend.onnx_import import import_onnx
from relaycomp.passes.apply_tuning_database import with_layout_free_weights
from relaycomp.passes.schedule_cpu_loops import RULE_ATTR
from relaycomp.registry import PASSES
from relaycomp.runtime.tracker import Device
from relaycomp.targets import resolve
from relaycomp.tune.check import heuristic_module
from relaycomp.tune.db import NOTES, RECORDS, TuningDatabase, WorkloadState
from relaycomp.tune.space import POSTPROCS, heuristic_spaces
from relaycomp.tune.tuner import MIN_TASK_TRIALS, TuneConfig, _budgets, tune

# Two searches of MIN_TASK_TRIALS: the budget goes to the two largest shares of the model's
# measured time, so one noisy baseline (a 4 us pooling kernel measured at 2.9 ms on a busy
# machine) cannot take the whole budget from every kernel with relaycomp's design spaces.
TRIALS = 2 * MIN_TASK_TRIALS


@pytest.fixture(scope="module")
def model():
    """A small CNN: conv, pooling, dense kernels."""
    return conv_net()


@pytest.fixture(scope="module")
def tuned(model, tmp_path_factory):
    """One tiny tuning session: (database folder, report)."""
    database = tmp_path_factory.mktemp("tuning-db")
    report = tune(model, TuneConfig(trials=TRIALS, tuning_db=database, seed=0, progress=False))
    return database, report


def _compile_tuned(model, database, output: Path, trials: int = 0):
    tuning = TuneConfig(trials=trials, tuning_db=database, progress=False)
    config = CompileConfig(features=(tuning,))
    return compile_model(model, output, config)


def test_tuning_measures_every_kernel_and_spends_the_budget(tuned):
    _, report = tuned
    assert report.tasks, "no tuning tasks were extracted"
    assert all(t.heuristic_ms < float("inf") for t in report.tasks), "a baseline failed"
    assert 0 < report.new_trials <= TRIALS + len(report.tasks)
    assert abs(sum(t.share for t in report.tasks) - 1.0) < 1e-6
    assert "heuristic ms -> tuned ms" in report.table()


def test_tuned_build_matches_onnxruntime(model, tuned, tmp_path):
    database, _ = tuned
    artifact = _compile_tuned(model, database, tmp_path / "tuned.so")
    assert "schedule/apply_tuning_database" in artifact.manifest.passes
    inputs = random_inputs(model)
    actual = relaycomp.load(artifact.path).run(inputs)
    expected = ort_outputs(model, inputs)
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, rtol=1e-3, atol=1e-4)


def test_second_run_tunes_nothing_and_builds_the_same(model, tuned, tmp_path):
    database, first = tuned
    again = tune(model, TuneConfig(trials=TRIALS, tuning_db=database, progress=False))
    assert again.new_trials == 0
    assert [t.tuned_ms for t in again.tasks] == [t.tuned_ms for t in first.tasks]
    one = _compile_tuned(model, database, tmp_path / "one.so", trials=TRIALS)
    two = _compile_tuned(model, database, tmp_path / "two.so")
    assert one.manifest.report["tuning"]["new_trials"] == 0
    inputs = random_inputs(model)
    out_one = relaycomp.load(one.path).run(inputs)
    out_two = relaycomp.load(two.path).run(inputs)
    for name in out_one:
        np.testing.assert_array_equal(out_one[name], out_two[name])


def test_a_quantized_compile_tunes_its_int8_kernels_not_the_float_ones(model, tuned, tmp_path):
    from relaycomp.quantize.quantizer import QuantConfig

    database, _ = tuned
    calibration = {name: np.stack([random_inputs(model, seed=s)[name] for s in range(8)])
                   for name in random_inputs(model)}
    tuning = TuneConfig(trials=0, tuning_db=database, progress=False)
    config = CompileConfig(calibration=calibration, features=(QuantConfig(), tuning))
    artifact = compile_model(model, tmp_path / "int8.so", config)
    assert artifact.manifest.report["quantize"]["layers"]
    assert "schedule/apply_tuning_database" in artifact.manifest.passes
    stages = [name.split("/")[0] for name in artifact.manifest.passes]
    assert stages.index("quantize") < stages.index("schedule")


def test_only_records_faster_than_the_heuristic_are_applied(tuned):
    database, _ = tuned
    loaded = TuningDatabase(database, resolve("host").tvm_target()).load()
    applied = loaded.best_records().get_all_tuning_records()
    faster = [s for s in loaded.states.values() if s.tuned_is_faster]
    assert len(applied) == len(faster)
    for state in faster:  # applied only after winning the paired check, as both ship
        heuristic, tuned = state.checks[state.winner]
        assert tuned < heuristic
    assert not any(s.needs_check for s in loaded.states.values())


def test_a_record_that_won_its_check_stays_applied_when_a_later_best_loses_its_own():
    state = WorkloadState(best=object(), best_seconds=0.5, stored={1.0: None, 0.5: None},
                          checks={1.0: (3.0, 2.0),    # won: 2.0 ms against the heuristic's 3.0
                                  0.5: (3.0, 3.5)})   # the best in search lost as shipped
    assert state.check == (3.0, 3.5) and not state.needs_check
    assert state.winner == 1.0 and state.tuned_is_faster
    assert state.shown_check == (3.0, 2.0) and state.shipped_seconds == 2.0
    state.checks[1.0] = (3.0, 2.95)  # within the margin: nothing is applied
    assert state.winner is None and not state.tuned_is_faster and state.shipped_seconds == 3.0


def test_a_torn_last_line_is_ignored(tuned, tmp_path):
    database, _ = tuned
    target = resolve("host").tvm_target()
    before = TuningDatabase(database, target).load()
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(database, copy)
    records = next(copy.glob(f"*/run-*/{RECORDS}"))
    with open(records, "a", encoding="utf-8") as file:
        file.write('[0, [["half a rec')   # what a writer killed mid-line leaves
    after = TuningDatabase(copy, target).load()
    assert sum(s.trials for s in after.states.values()) == \
        sum(s.trials for s in before.states.values())


def test_the_search_starts_from_the_heuristic_schedule_and_seeds_are_not_trials(tuned):
    database, report = tuned
    notes = [json.loads(line) for path in database.glob(f"*/run-*/{NOTES}")
             for line in path.read_text().splitlines()]
    seeded = {n["workload"]: n["seed_seconds"] for n in notes if "seed_seconds" in n}
    baselines = {n["workload"]: n["baseline_seconds"] for n in notes if "baseline_seconds" in n}
    assert seeded, "no task was searched from the heuristic schedule"
    for workload, seconds in seeded.items():  # seeded with its measured heuristic time
        assert seconds[0] == baselines[workload]
    records = sum(len(path.read_text().splitlines())
                  for path in database.glob(f"*/run-*/{RECORDS}"))
    loaded = TuningDatabase(database, resolve("host").tvm_target()).load()
    trials = sum(s.trials for s in loaded.states.values())
    assert trials == records - sum(len(v) for v in seeded.values())
    assert trials == sum(t.trials for t in report.tasks)


def test_heuristic_design_space_as_sampled_is_the_heuristic_schedule(model):
    """Each conv/dense kernel's first design space, its decisions as sampled and MetaSchedule's
    postprocessors applied, is exactly the schedule an untuned build gives it."""
    spec = resolve("host")
    target = spec.tvm_target()
    stages = default_stages(spec.kind)
    fused, _ = run_stages(import_onnx(model).mod, split_before(stages, "schedule")[0], target)
    tasks = ms.relax_integration.extract_tasks(with_layout_free_weights(fused), target)
    postprocs = [make() for make in POSTPROCS]
    spaced = 0
    for task in tasks:
        spaces = heuristic_spaces(task.dispatched[0], target)
        if not spaces:
            continue
        spaced += 1
        sch = spaces[0].copy()
        assert all(postproc.apply(sch) for postproc in postprocs)
        heuristic = heuristic_module(task.dispatched[0], stages, target)
        (kernel,) = [f for g, f in heuristic.functions_items()
                     if not g.name_hint.endswith("_weight_prepack")]
        expected = kernel.without_attr("tirx.is_scheduled").without_attr(RULE_ATTR)
        tvm.ir.assert_structural_equal(sch.mod["main"], expected)
        # A dense layer, or a mean over the blocked layout (lanes = the channel block), has
        # one plan; the convs have alternatives for the tuner.
        assert len(spaces) > 1 or task.task_name.startswith(("fused_matmul", "mean"))
    assert spaced >= 2  # the convs and the dense layer


def test_budget_follows_share_of_latency():
    class Task:
        def __init__(self, weight):
            self.weight = weight

    # a failed baseline counts as the slowest kernel; shares 2:2:2
    assert _budgets([Task(1), Task(2), Task(1)], [2e-3, 1e-3, None], 120) == [40, 40, 40]
    # shares 3:1: each tuned task gets MIN_TASK_TRIALS, the rest goes by share
    assert _budgets([Task(3), Task(1)], [1e-3, 1e-3], 2 * MIN_TASK_TRIALS + 40) == \
        [MIN_TASK_TRIALS + 30, MIN_TASK_TRIALS + 10]
    # a budget too small for both goes to the largest share; a tiny one all to it
    assert _budgets([Task(1), Task(3)], [1e-3, 1e-3], MIN_TASK_TRIALS + 8) == \
        [0, MIN_TASK_TRIALS + 8]
    assert _budgets([Task(1), Task(3)], [1e-3, 1e-3], 8) == [0, 8]


def test_apply_tuning_database_is_a_registered_schedule_pass():
    assert PASSES.get("apply_tuning_database").stage == "schedule"


def test_rpc_without_key_is_refused():
    with pytest.raises(TuningError, match="go together"):
        TuneConfig(rpc="127.0.0.1:9190")
    with pytest.raises(TuningError, match="HOST:PORT"):
        Device(rpc="localhost", key="x")


def test_unreachable_tracker_is_a_clear_error(model, tmp_path):
    config = TuneConfig(trials=4, tuning_db=tmp_path, rpc=f"127.0.0.1:{free_port()}", key="x",
                        progress=False)
    with pytest.raises(TuningError, match="cannot reach the RPC tracker"):
        tune(model, config)


def test_cuda_without_a_gpu_builds_tasks_then_fails_clearly(model, tmp_path):
    import tvm

    if tvm.cuda(0).exist:
        pytest.skip("this machine has a GPU")
    config = TuneConfig(target="cuda", arch="sm_80", trials=4, tuning_db=tmp_path,
                        progress=False)
    with pytest.raises(TuningError, match="no CUDA GPU"):
        tune(model, config)


def test_cli_tune_and_compile_options_parse():
    from relaycomp.cli.main import build_parser
    from relaycomp.tune.cli import compile_config as tuning_option

    args = build_parser().parse_args(["compile", "m.onnx", "--tune", "32", "--tuning-db", "db"])
    option = tuning_option(args)
    assert (option.trials, str(option.tuning_db)) == (32, "db")
    args = build_parser().parse_args(["tune", "m.onnx", "--trials", "8", "--rpc", "h:1",
                                      "--key", "k", "--input", "x:1,3,8,8"])
    assert (args.trials, args.rpc, args.key) == (8, "h:1", "k")
    assert tuning_option(build_parser().parse_args(["compile", "m.onnx"])) is None


# ---- extra processes ----------------------------------------------------------------------------

def _tune_process(model_path, database, trials, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "relaycomp.cli", "tune", str(model_path), "--trials", str(trials),
         "--tuning-db", str(database), "--trials-per-iter", "4", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _trials(database) -> int:
    loaded = TuningDatabase(database, resolve("host").tvm_target()).load()
    return sum(s.trials for s in loaded.states.values())


@pytest.fixture
def model_file(tmp_path):
    """An MLP (two dense kernels and a softmax) saved to disk: tuner processes start fast."""
    import onnx

    path = tmp_path / "mlp.onnx"
    onnx.save(mlp(), path)
    return path


@pytest.mark.slow  # 20-35 s: real tuning sessions
def test_resume_after_sigkill_keeps_records(model_file, tmp_path):
    database = tmp_path / "db"
    process = _tune_process(model_file, database, 16)
    deadline = time.monotonic() + 400
    while _trials(database) < 4 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(1)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    kept = _trials(database)
    assert kept >= 4, "records finished before the kill were lost"
    report = tune(model_file, TuneConfig(trials=16, tuning_db=database, progress=False))
    assert report.new_trials <= 16 + len(report.tasks) - kept


@pytest.mark.slow  # 20-35 s: real tuning sessions
def test_two_concurrent_tuners_share_one_database(model_file, tmp_path):
    database = tmp_path / "db"
    processes = [_tune_process(model_file, database, 8, "--seed", str(seed)) for seed in (1, 2)]
    for process in processes:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output
    assert len(list(database.glob("*/run-*"))) >= 2
    assert _trials(database) >= 8
    again = tune(model_file, TuneConfig(trials=8, tuning_db=database, progress=False))
    assert again.new_trials == 0


def _start_server(tracker: str, key: str, log=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", tracker,
                             "--key", key, "--host", "127.0.0.1", *_port_range()],
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "TVM_NUM_THREADS": "2"},
                            start_new_session=True)  # its own group: it forks a worker


@pytest.fixture
def rpc_device():
    """A TVM RPC tracker and one server under key 'loopback', on 127.0.0.1."""
    with rpc_tracker() as tracker:
        server = _start_server(tracker, "loopback")
        try:
            wait_for_device(tracker, "loopback")
            yield tracker, server
        finally:
            kill_group(server)


def _port_range() -> list[str]:
    port = free_port()
    return ["--port", str(port), "--port-end", str(port + 1)]


@pytest.mark.slow
def test_tuning_over_rpc_on_loopback(model, rpc_device, tmp_path):
    tracker, _ = rpc_device
    report = tune(model, TuneConfig(trials=4, tuning_db=tmp_path, rpc=tracker, key="loopback",
                                    progress=False))
    assert all(t.heuristic_ms < float("inf") for t in report.tasks)
    assert report.new_trials > 0


@pytest.mark.slow  # 20-35 s: real tuning sessions
def test_several_devices_under_one_key_share_the_measurements(model, tmp_path):
    with rpc_tracker() as tracker:
        logs = [tmp_path / f"server{i}.log" for i in range(2)]
        servers = []
        try:
            for log in logs:
                with open(log, "w") as stream:
                    servers.append(_start_server(tracker, "farm", stream))
            wait_for_device(tracker, "farm", count=2)
            report = tune(model, TuneConfig(trials=8, tuning_db=tmp_path / "db", rpc=tracker,
                                            key="farm", trials_per_iter=8, progress=False))
        finally:
            for server in servers:
                kill_group(server)
    assert report.new_trials > 0
    for log in logs:
        assert "connected from" in log.read_text(), f"{log.name}: this device measured nothing"


def test_wrong_key_is_a_clear_error(model, rpc_device, tmp_path):
    tracker, _ = rpc_device
    with pytest.raises(TuningError, match="no device is registered under key 'nope'"):
        tune(model, TuneConfig(trials=4, tuning_db=tmp_path, rpc=tracker, key="nope",
                               progress=False))


def test_a_device_lost_mid_run_gives_failed_trials_not_a_crash(model, rpc_device, tmp_path):
    tracker, server = rpc_device
    kill_group(server)
    config = TuneConfig(trials=4, tuning_db=tmp_path, rpc=tracker, key="loopback",
                        progress=False)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:   # the tracker may still list the dead server, or may have dropped it already
            report = tune(model, config)
        except TuningError as err:  # or the device, still listed, never becomes free
            assert ("no device is registered" in str(err)
                    or "no device under key 'loopback'" in str(err)), str(err)
            return
    assert any("could not be measured" in str(w.message) for w in caught)
    assert all(t.tuned_ms is None for t in report.tasks)


def test_run_on_a_device_over_rpc_matches_the_local_run(model, rpc_device, tmp_path):
    tracker, _ = rpc_device
    artifact = compile_model(model, tmp_path / "model.so").path
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, **random_inputs(model))
    local, remote = tmp_path / "local.npz", tmp_path / "remote.npz"
    assert run_cli("run", artifact, "--inputs", inputs, "--outputs", local).returncode == 0
    result = run_cli("run", artifact, "--inputs", inputs, "--outputs", remote,
                     "--rpc", tracker, "--key", "loopback", "--repeat", "5")
    assert result.returncode == 0, result.stderr
    assert "latency: median" in result.stdout
    expected, actual = np.load(local), np.load(remote)
    assert sorted(expected.files) == sorted(actual.files)
    for name in expected.files:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-6, atol=1e-6)


def test_run_with_an_unreachable_tracker_is_one_line(model, tmp_path):
    artifact = compile_model(model, tmp_path / "model.so").path
    result = run_cli("run", artifact, "--rpc", f"127.0.0.1:{free_port()}", "--key", "x")
    assert result.returncode == 1
    assert "cannot reach the RPC tracker" in result.stderr
    assert "Traceback" not in result.stderr


def test_candidates_for_an_aarch64_device_are_cross_compiled(model):
    from tvm.s_tir import meta_schedule as ms

    from relaycomp.compiler.pipeline import default_stages, run_stages, split_before
    from relaycomp.frontend.onnx_import import import_onnx
    from relaycomp.passes.apply_tuning_database import with_layout_free_weights
    from relaycomp.targets import elf_machine
    from relaycomp.tune.check import heuristic_module
    from relaycomp.tune.measure import make_builder

    spec = resolve("raspberry-pi-4")
    target, stages = spec.tvm_target(), default_stages(spec.kind)
    fused, _ = run_stages(import_onnx(model, {}).mod, split_before(stages, "schedule")[0], target)
    task = ms.relax_integration.extract_tasks(with_layout_free_weights(fused), target)[0]
    kernel = heuristic_module(task.dispatched[0], stages, target)
    builder = make_builder(spec)
    try:
        (result,) = builder.build([ms.builder.BuilderInput(kernel, target)])
    finally:
        builder.close()
    assert result.error_msg is None, result.error_msg
    assert elf_machine(result.artifact_path) == "aarch64"


def test_tuning_for_another_machine_without_a_device_is_refused(model, tmp_path):
    with pytest.raises(TuningError, match="cannot run on this machine"):
        tune(model, TuneConfig(target="raspberry-pi-4", trials=4, tuning_db=tmp_path,
                               progress=False))


@pytest.mark.parametrize("preset", ["raspberry-pi-4", "x86-64-avx512", "x86-64-avx512-bf16"])
@pytest.mark.parametrize("net", [conv_net, mobilenet_style_net])
def test_every_heuristic_baseline_builds_as_the_tuner_builds_it(preset, net):
    """The tuner measures each kernel's heuristic schedule built by its own builder (weight
    repacks removed, as a build folds them): every kernel of a CNN must build that way, or its
    baseline is lost (a bias copy read at constant indices once broke it on Arm). The bf16
    preset builds with ``--precision bf16`` (its tensorized kernels)."""
    from relaycomp.compiler.pipeline import Placement, with_passes
    from relaycomp.tune.measure import build_kernel

    target = resolve(preset).tvm_target()
    stages = default_stages("llvm")
    if preset.endswith("bf16"):
        stages = with_passes(stages, [Placement("convert_to_bf16", "layout", "end")])
    fused, _ = run_stages(import_onnx(net()).mod, split_before(stages, "schedule")[0], target)
    tasks = ms.relax_integration.extract_tasks(with_layout_free_weights(fused), target)
    assert len(tasks) > 3
    for task in tasks:
        build_kernel(heuristic_module(task.dispatched[0], stages, target), target, None)


def test_bf16_kernels_build_in_the_tuners_worker_processes(model):
    """A bf16 kernel for AVX-512 BF16 calls relaycomp's own TIR op (``bf16_round``); the build
    workers do not import relaycomp, so they register it themselves - without it every such
    candidate failed to unpickle there and its kernel could not be tuned."""
    from tvm.s_tir import meta_schedule as ms

    from relaycomp.compiler.pipeline import (
        Placement,
        default_stages,
        run_stages,
        split_before,
        with_passes,
    )
    from relaycomp.frontend.onnx_import import import_onnx
    from relaycomp.passes.apply_tuning_database import with_layout_free_weights
    from relaycomp.schedules.cpu.bf16_round import CONVERT_OP
    from relaycomp.tune.check import heuristic_module
    from relaycomp.tune.measure import make_builder

    spec = resolve("x86-64-avx512-bf16")
    target = spec.tvm_target()
    stages = with_passes(default_stages("llvm"), [Placement("convert_to_bf16", "layout", "end")])
    fused, _ = run_stages(import_onnx(model, {}).mod, split_before(stages, "schedule")[0], target)
    tasks = ms.relax_integration.extract_tasks(with_layout_free_weights(fused), target)
    kernels = [heuristic_module(task.dispatched[0], stages, target) for task in tasks]
    rounding = [kernel for kernel in kernels if CONVERT_OP.removeprefix("tirx.") in kernel.script()]
    assert rounding
    builder = make_builder(spec)
    try:
        results = builder.build([ms.builder.BuilderInput(kernel, target) for kernel in rounding])
    finally:
        builder.close()
    assert [result.error_msg for result in results] == [None] * len(rounding)
