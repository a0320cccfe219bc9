"""Device bundles: the folder runs the model with TVM's C++ runtime and no Python, natively on
x86 and on the emulated aarch64 device under qemu-user, with onnxruntime's outputs.

The aarch64 tests need ``g++-aarch64-linux-gnu`` and ``qemu-user-static`` (``.ci/run`` installs
them) and the emulated device's Debian root folder for the aarch64 C and C++ libraries (prepared
as in ``test_emulated_device.py``); they are skipped without them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import ort_outputs, run_cli
from models import int64_inputs_net, mlp, multi_io_net, random_inputs

from relaycomp.bundle import Bundle, write_bundle
from relaycomp.cli.main import main
from relaycomp.compiler.build import CompileConfig, compile_model
from relaycomp.errors import ArtifactError
from relaycomp.runtime.emulated_device import default_root, prepare

# Only the runner's own needs: no Python, no PYTHONPATH; the runtime comes from the bundle.
PLAIN_ENV = {"PATH": "/usr/bin:/bin", "TVM_NUM_THREADS": "2"}


def _run(command, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], check=False, capture_output=True,
                          text=True, env=PLAIN_ENV, timeout=300, **kwargs)


def _assert_outputs_match(folder, model, inputs, rtol=1e-4):
    expected = ort_outputs(model, inputs)
    for name, reference in expected.items():
        actual = np.load(folder / f"{name}.npy")
        assert actual.dtype == reference.dtype and actual.shape == reference.shape, name
        np.testing.assert_allclose(actual, reference, rtol=rtol, atol=1e-5, err_msg=name)


# ---- native x86 -------------------------------------------------------------------------------

@pytest.mark.parametrize("make_model", [multi_io_net, int64_inputs_net])
def test_a_host_bundle_runs_without_python_like_onnxruntime(make_model, tmp_path):
    """Two inputs and three outputs in the signature's order; int64 and bool inputs."""
    model = make_model()
    artifact = compile_model(model, tmp_path / "model.so", CompileConfig())
    bundle = write_bundle(artifact.path, tmp_path / "bundle")
    inputs = random_inputs(model)
    np.savez(tmp_path / "inputs.npz", **inputs)
    # run.sh: a shell script exec-ing the C++ runner (the board's command, as its README says)
    result = _run([bundle.folder / "run.sh", tmp_path / "inputs.npz", tmp_path / "out",
                   "--repeat", "3"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "latency: median" in result.stdout
    _assert_outputs_match(tmp_path / "out", model, inputs)
    # the same from a folder of NAME.npy, calling the runner itself (rpath finds lib/)
    (tmp_path / "npy").mkdir()
    for name, array in inputs.items():
        np.save(tmp_path / "npy" / f"{name}.npy", array)
    result = _run(bundle.command(tmp_path / "npy", tmp_path / "out2", repeat=1))
    assert result.returncode == 0, result.stderr
    _assert_outputs_match(tmp_path / "out2", model, inputs)


def test_the_compile_command_writes_a_bundle_whose_example_runs(tmp_path):
    model_path = tmp_path / "mlp.onnx"
    onnx.save(mlp(), model_path)
    result = run_cli("compile", model_path, "-o", tmp_path / "mlp.so", "--bundle",
                     tmp_path / "board")
    assert result.returncode == 0, result.stderr
    assert f"bundle for x86_64 -> {tmp_path / 'board'}/" in result.stdout
    board = tmp_path / "board"
    assert {p.name for p in board.iterdir()} >= {
        "model.so", "model.so.json", "lib", "relaycomp-runner", "runner", "signature.txt",
        "example_inputs.npz", "run.sh", "README.md"}
    assert {p.name for p in (board / "lib").iterdir()} == {"libtvm_runtime.so", "libtvm_ffi.so"}
    assert "./run.sh" in (board / "README.md").read_text()
    result = _run([board / "run.sh"], cwd=tmp_path)  # the defaults: example inputs -> outputs/
    assert result.returncode == 0, result.stderr
    example = dict(np.load(board / "example_inputs.npz"))
    _assert_outputs_match(tmp_path / "outputs", mlp(), example)


@pytest.fixture(scope="module")
def mlp_artifact(tmp_path_factory) -> Path:
    """An mlp compiled for this machine (tests must not change it)."""
    folder = tmp_path_factory.mktemp("mlp-artifact")
    return compile_model(mlp(), folder / "model.so", CompileConfig()).path


@pytest.fixture(scope="module")
def mlp_bundle(mlp_artifact, tmp_path_factory) -> Bundle:
    """An mlp's host bundle, written by ``relaycomp package`` (tests must not change it)."""
    folder = tmp_path_factory.mktemp("mlp")
    assert main(["package", str(mlp_artifact), str(folder / "bundle")]) == 0
    return Bundle(folder / "bundle", folder / "bundle" / "relaycomp-runner", "x86_64")


def test_package_writes_the_bundle_of_an_artifact_compiled_earlier(mlp_bundle, tmp_path):
    result = _run(mlp_bundle.command(mlp_bundle.folder / "example_inputs.npz", tmp_path))
    assert result.returncode == 0, result.stderr
    _assert_outputs_match(tmp_path, mlp(), dict(np.load(mlp_bundle.folder /
                                                        "example_inputs.npz")))


def test_the_shipped_build_script_rebuilds_the_runner(mlp_bundle, tmp_path):
    folder = Path(shutil.copytree(mlp_bundle.folder, tmp_path / "copy"))
    (folder / "relaycomp-runner").unlink()
    result = _run(["sh", folder / "runner" / "build.sh"])
    assert result.returncode == 0, result.stderr
    result = _run([folder / "run.sh", folder / "example_inputs.npz", tmp_path / "out"])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "probs.npy").is_file()


def test_the_runner_refuses_bad_inputs_in_one_line(mlp_bundle, tmp_path):
    inputs = random_inputs(mlp())
    (name, array), = inputs.items()
    np.savez(tmp_path / "wrong.npz", **{name: array[..., :-1]})
    np.savez_compressed(tmp_path / "compressed.npz", **inputs)
    for path, message in ((tmp_path / "wrong.npz", f"input '{name}' is float32["),
                          (tmp_path / "compressed.npz", "is compressed (np.savez_compressed)"),
                          (tmp_path / "missing.npz", "cannot read")):
        result = _run(mlp_bundle.command(path, tmp_path / "out"))
        assert result.returncode == 1
        assert result.stderr.startswith("relaycomp-runner: error: "), result.stderr
        assert message in result.stderr and len(result.stderr.splitlines()) == 1


# ---- refusals: one error line, nothing written ------------------------------------------------

def _error(capsys) -> str:
    error = capsys.readouterr().err
    assert error.startswith("relaycomp: error: "), error
    assert "Traceback" not in error
    return error


def test_a_non_empty_folder_is_kept_without_force_and_replaced_with_it(tmp_path, capsys):
    model_path = tmp_path / "mlp.onnx"
    onnx.save(mlp(), model_path)
    folder = tmp_path / "board"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    args = ["compile", str(model_path), "-o", str(tmp_path / "mlp.so"), "--bundle", str(folder)]
    assert main(args) == 1
    error = _error(capsys)
    assert "the folder exists and is not empty" in error and "hint: pass --force" in error
    assert not (tmp_path / "mlp.so").exists(), "compiled before refusing"
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    assert main([*args, "--force"]) == 0
    assert not (folder / "notes.txt").exists() and (folder / "relaycomp-runner").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_missing_cross_compiler_says_what_to_install(tmp_path, capsys, monkeypatch):
    model_path = tmp_path / "mlp.onnx"
    onnx.save(mlp(), model_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    code = main(["compile", str(model_path), "--target", "raspberry-pi-4", "-o",
                 str(tmp_path / "m.so"), "--bundle", str(tmp_path / "board")])
    error = _error(capsys)
    assert code == 1
    assert "'aarch64-linux-gnu-g++' not found" in error
    assert "apt-get install g++-aarch64-linux-gnu" in error
    assert not (tmp_path / "board").exists() and not (tmp_path / "m.so").exists()


# ---- Android: the NDK and a runtime built with it ----------------------------------------------

ANDROID = ["--target", "aarch64-linux-android"]


@pytest.fixture
def no_ndk(monkeypatch, tmp_path):
    """An environment where no Android NDK can be found."""
    for variable in ("ANDROID_NDK_HOME", "ANDROID_NDK_ROOT"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    if shutil.which("ndk-build"):
        pytest.skip("an NDK's ndk-build is in /usr/bin")


def _ndk_tree(root: Path) -> Path:
    """An NDK's layout, as far as relaycomp looks for it: ndk-build at the top and the clang++
    driver in toolchains/llvm/prebuilt/HOST/bin (empty scripts: the error comes before any
    compiler would run)."""
    bin_folder = root / "toolchains" / "llvm" / "prebuilt" / "linux-x86_64" / "bin"
    bin_folder.mkdir(parents=True)
    for program in (root / "ndk-build", bin_folder / "aarch64-linux-android24-clang++"):
        program.write_text("#!/bin/sh\nexit 1\n")
        program.chmod(0o755)
    return root


def test_an_android_bundle_names_the_ndk_and_the_runtime_it_needs(no_ndk, tmp_path, capsys):
    args = ["compile", "example:digits", *ANDROID, "-o", str(tmp_path / "m.so"),
            "--bundle", str(tmp_path / "board")]
    assert main(args) == 1
    error = _error(capsys)
    message, hint = error.splitlines()
    assert "needs the Android NDK (ANDROID_NDK_HOME and ANDROID_NDK_ROOT are unset" in message
    assert "and TVM's runtime built for Android" in message and "--runtime-dir DIR" in message
    assert "set ANDROID_NDK_HOME" in hint and "android.toolchain.cmake" in hint
    # with a runtime folder, only the NDK is missing
    runtime = _host_runtime(tmp_path / "runtime")
    assert main([*args, "--runtime-dir", str(runtime)]) == 1
    error = _error(capsys)
    assert "needs the Android NDK" in error and "TVM's runtime built for Android" not in error
    assert list(tmp_path.iterdir()) == [runtime]


def test_an_ndk_is_found_through_ndk_build_and_then_only_the_runtime_is_missing(
        no_ndk, tmp_path, monkeypatch, capsys):
    ndk = _ndk_tree(tmp_path / "android-ndk")
    monkeypatch.setenv("PATH", f"{ndk}:/usr/bin:/bin")
    args = ["compile", "example:digits", *ANDROID, "-o", str(tmp_path / "m.so"),
            "--bundle", str(tmp_path / "board")]
    assert main(args) == 1
    message, hint = _error(capsys).splitlines()
    assert "needs TVM's runtime built for Android" in message and "NDK" not in message
    assert f"-DCMAKE_TOOLCHAIN_FILE={ndk}/build/cmake/android.toolchain.cmake" in hint
    runtime = _host_runtime(tmp_path / "runtime")
    assert main([*args, "--runtime-dir", str(runtime)]) == 1
    assert "libtvm_runtime.so is built for x86_64, the target is aarch64" in _error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["android-ndk", "runtime"]


def test_an_ndk_folder_without_its_compiler_is_named(no_ndk, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ANDROID_NDK_HOME", str(tmp_path))
    assert main(["compile", "example:digits", *ANDROID, "-o", str(tmp_path / "m.so"),
                 "--bundle", str(tmp_path / "board")]) == 1
    error = _error(capsys)
    assert f"no aarch64-linux-android*-clang++ in {tmp_path}/toolchains/llvm/prebuilt/*/bin" \
        in error and "$ANDROID_NDK_HOME" in error


# ---- --runtime-dir: the user's build of TVM's runtime --------------------------------------------

def _host_runtime(folder: Path) -> Path:
    """This machine's TVM runtime copied into ``folder`` as a user's build would be laid out
    (libtvm_ffi.so in lib/, as TVM's CMake build puts it), with a note section added so that
    its bytes differ from the installed library's."""
    import tvm.libinfo
    import tvm_ffi.libinfo

    (folder / "lib").mkdir(parents=True)
    (folder / "note.txt").write_text("built by the test\n")
    subprocess.run(["objcopy", "--add-section", f".note.relaycomp-test={folder / 'note.txt'}",
                    tvm.libinfo.find_libtvm_runtime(), folder / "libtvm_runtime.so"],
                   check=True)
    shutil.copy2(tvm_ffi.libinfo.find_libtvm_ffi(), folder / "lib" / "libtvm_ffi.so")
    return folder


@pytest.mark.skipif(not shutil.which("objcopy"), reason="needs objcopy (binutils)")
def test_a_bundle_ships_the_runtime_from_runtime_dir_and_runs_with_it(mlp_artifact, tmp_path):
    runtime = _host_runtime(tmp_path / "my-tvm-build")
    result = run_cli("package", mlp_artifact, tmp_path / "board", "--runtime-dir", runtime,
                     "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert {"lib/libtvm_runtime.so", "lib/libtvm_ffi.so", "relaycomp-runner"} <= \
        set(document["files"]) and document["machine"] == "x86_64"
    board = tmp_path / "board"
    assert (board / "lib" / "libtvm_runtime.so").read_bytes() == \
        (runtime / "libtvm_runtime.so").read_bytes()
    assert (board / "lib" / "libtvm_ffi.so").read_bytes() == \
        (runtime / "lib" / "libtvm_ffi.so").read_bytes()
    result = _run([board / "run.sh", board / "example_inputs.npz", tmp_path / "out"])
    assert result.returncode == 0, result.stderr
    _assert_outputs_match(tmp_path / "out", mlp(), dict(np.load(board / "example_inputs.npz")))


def test_a_runtime_dir_that_cannot_serve_is_one_error_before_compiling(tmp_path, capsys):
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    (runtime / "libtvm_runtime.so").write_text("not a library")
    compile_args = ["compile", "example:digits", "-o", str(tmp_path / "m.so")]
    for extra, message in (
            (["--bundle", str(tmp_path / "b"), "--runtime-dir", str(tmp_path / "nowhere")],
             "no such folder"),
            (["--bundle", str(tmp_path / "b"), "--runtime-dir", str(runtime)],
             "libtvm_ffi.so not found there (nor in its lib/)"),
            (["--runtime-dir", str(runtime)], "--runtime-dir goes with --bundle")):
        assert main([*compile_args, *extra]) == 1
        assert message in _error(capsys)
    (runtime / "libtvm_ffi.so").write_text("not a library either")
    assert main([*compile_args, "--bundle", str(tmp_path / "b"), "--runtime-dir",
                 str(runtime)]) == 1
    assert "libtvm_runtime.so: 'runtime/libtvm_runtime.so' is not an ELF file" in \
        _error(capsys).replace(str(tmp_path) + "/", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runtime"]


def test_other_requests_that_cannot_make_a_bundle_fail_before_compiling(tmp_path, capsys):
    for extra, message in ((["--target", "cuda"], "bundles run on CPUs"),
                           (["--target", "raspberry-pi-4-32bit"],
                            "TVM publishes no runtime library for arm"),
                           (["-o", str(tmp_path / "m.tar")], "-o " + str(tmp_path / "m.tar"))):
        code = main(["compile", "example:digits", *extra, "--bundle", str(tmp_path / "b")])
        assert code == 1
        assert message in _error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_bundle_of_an_object_archive_is_refused(tmp_path):
    artifact = compile_model(mlp(), tmp_path / "model.tar", CompileConfig())
    with pytest.raises(ArtifactError, match="is an object archive"):
        write_bundle(artifact.path, tmp_path / "b")
    assert not (tmp_path / "b").exists()


# ---- the emulated aarch64 device ---------------------------------------------------------------

@pytest.fixture(scope="module")
def aarch64_root():
    """The emulated device's Debian root folder (aarch64 libc, libstdc++) for qemu-user."""
    missing = [tool for tool in ("qemu-aarch64-static", "aarch64-linux-gnu-g++")
               if not shutil.which(tool)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install qemu-user-static "
                    "g++-aarch64-linux-gnu)")
    if os.geteuid() != 0 and not (default_root() / "aarch64" / "ready.json").is_file():
        pytest.skip("preparing the device folder needs root (debootstrap)")
    return prepare("aarch64").path / "rootfs"


def test_a_raspberry_pi_bundle_runs_on_the_emulated_device_like_onnxruntime(aarch64_root,
                                                                           tmp_path):
    model = multi_io_net()
    artifact = compile_model(model, tmp_path / "model.so",
                             CompileConfig(target="raspberry-pi-4"))
    bundle = write_bundle(artifact.path, tmp_path / "rpi4")
    assert bundle.machine == "aarch64"
    inputs = random_inputs(model)
    np.savez(tmp_path / "inputs.npz", **inputs)
    # qemu-user runs the aarch64 runner, which loads the bundle's aarch64 TVM runtime
    result = _run(["qemu-aarch64-static", "-L", aarch64_root,
                   *bundle.command(tmp_path / "inputs.npz", tmp_path / "out", repeat=2)])
    assert result.returncode == 0, result.stderr
    assert "latency: median" in result.stdout
    _assert_outputs_match(tmp_path / "out", model, inputs)
