"""The emulated aarch64 device: aarch64 builds run, are tuned and run int8 ``sdot`` kernels on a
TVM RPC server under qemu-user, reached through a tracker like a real board.

The device tests need ``apt-get install debootstrap qemu-user-static`` (``.ci/run`` installs
both) and are skipped without them. Their first start downloads Debian's aarch64 Python and TVM's
aarch64 wheels (about a minute, as root), cached in ``~/.cache/relaycomp/emulated``.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from helpers import free_port, ort_outputs, rpc_tracker, run_cli
from models import conv_net, random_inputs, resnet_block_net

from relaycomp.cli.main import main
from relaycomp.compiler.build import CompileConfig, compile_model
from relaycomp.quantize.quantizer import QuantConfig
from relaycomp.registry import RegistryError
from relaycomp.runtime.emulated_device import EmulatedDevice, EmulatorError, default_root, prepare
from relaycomp.runtime.remote import load_remote
from relaycomp.tune.tuner import TuneConfig, tune

KEY = "qemu-aarch64"


def test_an_unknown_architecture_lists_the_known_ones():
    with pytest.raises(RegistryError, match="unknown emulated architecture 'riscv64'") as err:
        prepare("riscv64")
    assert "aarch64" in err.value.hint


def test_a_missing_qemu_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EmulatorError, match="'qemu-aarch64-static' not found") as err:
        prepare("aarch64", root=tmp_path)
    assert err.value.hint == "install it: apt-get install qemu-user-static"


def test_the_command_line_reports_a_missing_qemu_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    code = main(["emulate-device", "--rpc", f"127.0.0.1:{free_port()}", "--key", KEY,
                 "--root", str(tmp_path)])
    error = capsys.readouterr().err
    assert code == 1
    assert error.startswith("relaycomp: error: 'qemu-aarch64-static' not found on PATH")
    assert "Traceback" not in error


def test_an_unreachable_tracker_is_one_line_at_once(monkeypatch, tmp_path, capsys):
    qemu = tmp_path / "qemu-aarch64-static"  # present, so that the tracker is what is missing
    qemu.write_text("#!/bin/sh\n")
    qemu.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    code = main(["emulate-device", "--rpc", f"127.0.0.1:{free_port()}", "--key", KEY])
    error = capsys.readouterr().err
    assert code == 1
    assert error.startswith("relaycomp: error: cannot reach the RPC tracker at 127.0.0.1:")
    assert "WARNING" not in error


def test_two_processes_preparing_one_folder_take_turns(monkeypatch, tmp_path):
    import fcntl
    import threading

    from relaycomp.runtime import emulated_device

    qemu = tmp_path / "qemu-aarch64-static"
    qemu.write_text("#!/bin/sh\n")
    qemu.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    built = []
    monkeypatch.setattr(emulated_device, "_prepared",
                        lambda sysroot, mirror, log: built.append(sysroot.path) or sysroot)
    with open(tmp_path / "aarch64.lock", "w") as other:  # another process preparing it
        fcntl.flock(other, fcntl.LOCK_EX)
        waiting = threading.Thread(target=prepare, args=("aarch64", tmp_path))
        waiting.start()
        waiting.join(timeout=0.5)
        assert waiting.is_alive() and not built
    waiting.join(timeout=10)
    assert built == [tmp_path / "aarch64"]


def test_a_tracker_address_without_a_port_is_refused():
    with pytest.raises(EmulatorError, match="expects HOST:PORT"):
        EmulatedDevice("localhost", KEY)


# ---- the device itself ------------------------------------------------------------------------

def _missing_for_the_device() -> str | None:
    missing = [tool for tool in ("qemu-aarch64-static", "debootstrap") if not shutil.which(tool)]
    if missing:
        return f"needs {', '.join(missing)} (apt-get install qemu-user-static debootstrap)"
    if os.geteuid() != 0 and not (default_root() / "aarch64" / "ready.json").is_file():
        return "preparing the device folder needs root (debootstrap)"
    return None


@pytest.fixture(scope="module")
def device():
    """A tracker on loopback and the emulated aarch64 server registered at it: "HOST:PORT"."""
    if reason := _missing_for_the_device():
        pytest.skip(reason)
    with rpc_tracker() as tracker, EmulatedDevice(tracker, KEY):
        yield tracker


def test_an_aarch64_build_runs_on_the_device_like_onnxruntime(device, tmp_path):
    model = conv_net()
    artifact = compile_model(model, tmp_path / "model.so", CompileConfig(target="raspberry-pi-4"))
    inputs = random_inputs(model)
    np.savez(tmp_path / "inputs.npz", **inputs)
    result = run_cli("run", artifact.path, "--inputs", tmp_path / "inputs.npz", "--outputs",
                     tmp_path / "outputs.npz", "--rpc", device, "--key", KEY, "--repeat", "2")
    assert result.returncode == 0, result.stderr
    actual = np.load(tmp_path / "outputs.npz")
    for name, expected in ort_outputs(model, inputs).items():
        np.testing.assert_allclose(actual[name], expected, rtol=1e-4, atol=1e-5)


def test_int8_sdot_kernels_compute_what_the_plain_int8_kernels_do(device, tmp_path):
    """Cortex-A76 builds take the ``sdot`` kernels (int8 x int8, activations shifted by 128);
    Cortex-A72 builds have no dot product and sum uint8 x int8 products. Both are exact
    integer sums, so the device must give the same numbers."""
    model = resnet_block_net()
    calibration = [random_inputs(model, seed=seed) for seed in range(8)]
    outputs = {}
    for board in ("raspberry-pi-5", "raspberry-pi-4"):
        config = CompileConfig(target=board, calibration=calibration, features=(QuantConfig(),))
        artifact = compile_model(model, tmp_path / f"{board}.so", config)
        outputs[board] = load_remote(artifact.path, device, KEY).run(random_inputs(model))
    for name, sdot in outputs["raspberry-pi-5"].items():
        np.testing.assert_allclose(sdot, outputs["raspberry-pi-4"][name], rtol=0, atol=1e-5)
        reference = ort_outputs(model, random_inputs(model))[name]
        assert np.corrcoef(sdot.ravel(), reference.ravel())[0, 1] > 0.99


@pytest.mark.slow
def test_tuning_on_the_device_measures_there_and_the_tuned_build_runs_there(device, tmp_path):
    model = conv_net()
    config = TuneConfig(target="raspberry-pi-4", trials=4, trials_per_iter=4,
                        tuning_db=tmp_path / "db", rpc=device, key=KEY, progress=False)
    report = tune(model, config)
    assert all(t.heuristic_ms < float("inf") for t in report.tasks), "a baseline failed"
    assert report.new_trials > 0
    reuse = CompileConfig(target="raspberry-pi-4", features=(TuneConfig(
        trials=0, tuning_db=tmp_path / "db", progress=False),))
    artifact = compile_model(model, tmp_path / "tuned.so", reuse)
    assert "schedule/apply_tuning_database" in artifact.manifest.passes
    inputs = random_inputs(model)
    actual = load_remote(artifact.path, device, KEY).run(inputs)
    for name, expected in ort_outputs(model, inputs).items():
        np.testing.assert_allclose(actual[name], expected, rtol=1e-4, atol=1e-5)
