"""Bad, corrupt or hostile input through the command line ends in one clean error (issue 16).

Every case gives exit code 1 and exactly one ``relaycomp: error:`` line (plus an optional
``  hint:``) on stderr: never a traceback, a crash, a hang or an internal error (exit 70).
Where the input is legal but odd (too many threads, all-zero calibration data) the command
succeeds with one ``relaycomp: warning:`` line.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnx
import pytest
from helpers import run_cli
from models import dynamic_reshape_net, mlp, save_with_external_data
from onnx import TensorProto, helper

import relaycomp
from relaycomp import targets
from relaycomp.compiler.manifest import manifest_path
from relaycomp.runtime.reference import compare
from relaycomp.tune.db import NOTES, RECORDS, WORKLOADS, target_key


def assert_one_clean_error(result, *phrases: str) -> str:
    """Exit 1, one ``relaycomp: error:`` line holding ``phrases``, no traceback; the line."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in output and "internal error" not in output, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("relaycomp: error:")]
    assert len(errors) == 1, result.stderr
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    return errors[0]


def warning_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("relaycomp: warning:")]


def _elementwise_model(path, *ops: str):
    """y = ops[-1](...ops[0](x)) on a [1, 4] float input, saved at ``path``."""
    nodes, name = [], "x"
    for index, op in enumerate(ops):
        out = "y" if index == len(ops) - 1 else f"t{index}"
        nodes.append(helper.make_node(op, [name], [out]))
        name = out
    graph = helper.make_graph(nodes, "elementwise",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _pooling_model(path):
    """A single MaxPool: a kernel MetaSchedule's pooling rules (which read num-cores) tune."""
    graph = helper.make_graph(
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])], "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def mlp_file(folder):
    path = folder / "mlp.onnx"
    onnx.save(mlp(), path)
    return path


@pytest.fixture(scope="module")
def mlp_artifact(folder, mlp_file):
    """The MLP compiled once for this machine; tests copy it before spoiling anything."""
    return relaycomp.compile(mlp_file, folder / "mlp.so").path


def _copy_artifact(artifact, folder, name: str):
    copy = folder / f"{name}.so"
    shutil.copyfile(artifact, copy)
    shutil.copyfile(manifest_path(artifact), manifest_path(copy))
    return copy


# --- 1. tuning and compiling for every CPU target form ----------------------------------------


@pytest.fixture(scope="module")
def pooling_tuned(folder):
    """A pooling model tuned (2 trials) for the bare x86-64 triple: (model, database, result)."""
    model = _pooling_model(folder / "pool.onnx")
    result = run_cli("tune", model, "--target", "x86_64-linux-gnu", "--trials", 2,
                     "--trials-per-iter", 2, "--tuning-db", folder / "pool-db", "--quiet")
    return model, folder / "pool-db", result


@pytest.mark.slow
def test_tuning_a_pooling_kernel_for_a_triple_target_works(pooling_tuned):
    _, _, result = pooling_tuned
    assert result.returncode == 0, result.stderr
    assert "max_pool2d" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("target", ["x86-64-avx512", "board.toml"])
def test_tuning_a_pooling_kernel_for_a_preset_and_a_user_toml_works(folder, target, tmp_path):
    """Issue 16: a preset or a user's TOML names no num-cores; MetaSchedule's pooling rules
    read it. Tuning must succeed and leave a record of the pooling kernel for that target."""
    if target.endswith(".toml"):
        (tmp_path / target).write_text('triple = "x86_64-linux-gnu"\nmcpu = "znver4"\n')
        target = str(tmp_path / target)
    result = run_cli("tune", _pooling_model(tmp_path / "pool.onnx"), "--target", target,
                     "--trials", 2, "--trials-per-iter", 2, "--tuning-db", tmp_path / "db",
                     "--quiet")
    assert result.returncode == 0, result.stderr
    assert "max_pool2d" in result.stdout
    assert list((tmp_path / "db").glob(f"*/run-*/{RECORDS}")), "no tuning records written"


@pytest.mark.slow
def test_a_corrupted_tuning_record_is_refused(pooling_tuned, tmp_path):
    model, database, result = pooling_tuned
    assert result.returncode == 0, result.stderr
    spoiled = shutil.copytree(database, tmp_path / "db")
    [records] = spoiled.glob(f"*/run-*/{RECORDS}")
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    for line in lines:  # a trace of an instruction that does not exist, and the fastest time
        line[1][0] = [[["NoSuchInstruction", [], [], []]], []]
        line[1][1] = [1e-9]
    records.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = run_cli("compile", model, "--target", "x86_64-linux-gnu", "-o", tmp_path / "p.so",
                     "--tuning-db", spoiled)
    assert_one_clean_error(result, "tuning record")


@pytest.mark.parametrize("name", ["x86_64-linux-gnu", "aarch64-linux-gnu", "x86-64-avx2",
                                  "cortex-a53", "board.toml", "cuda"])
def test_every_target_form_gives_its_cpu_a_num_cores(name, tmp_path):
    if name.endswith(".toml"):
        (tmp_path / name).write_text('triple = "x86_64-linux-gnu"\nmcpu = "haswell"\n')
        name = str(tmp_path / name)
    spec = targets.resolve(name)
    assert (spec.host or spec.target)["num-cores"] == targets.host.default_num_cores()
    overridden = targets.resolve(name, num_cores=3)  # --num-cores
    assert (overridden.host or overridden.target)["num-cores"] == 3


# --- 2. run --check and NaN ------------------------------------------------------------------


def test_compare_matches_nan_with_nan_and_inf_with_inf_only():
    same = compare({"y": np.array([np.nan, np.inf, 1.0])}, {"y": np.array([np.nan, np.inf, 1.0])})
    assert same["y"]["max_rel"] == 0 and same["y"]["nonfinite_mismatches"] == 0
    flipped = compare({"y": np.array([-np.inf, 1.0])}, {"y": np.array([np.inf, 1.0])})
    assert flipped["y"]["nonfinite_mismatches"] == 1 and flipped["y"]["max_rel"] == np.inf


def test_check_fails_when_outputs_are_nan_where_the_reference_is_not(tmp_path):
    sqrt = _elementwise_model(tmp_path / "sqrt.onnx", "Sqrt")  # NaN for negative inputs
    reference = _elementwise_model(tmp_path / "sqrt_abs.onnx", "Abs", "Sqrt")  # finite
    relaycomp.compile(sqrt, tmp_path / "sqrt.so")
    np.savez(tmp_path / "in.npz", x=np.array([[-1, 4, 9, -16]], np.float32))
    result = run_cli("run", tmp_path / "sqrt.so", "--inputs", tmp_path / "in.npz",
                     "--check", reference)
    assert_one_clean_error(result, "NaN")


def test_check_failure_is_one_error_line(tmp_path, mlp_artifact):
    other = mlp()
    weight = other.graph.initializer[0]
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 2,
                                                 weight.name))
    onnx.save(other, tmp_path / "other.onnx")
    result = run_cli("run", mlp_artifact, "--check", tmp_path / "other.onnx")
    assert_one_clean_error(result, "differ from onnxruntime")


# --- 3. run options and --input dims ---------------------------------------------------------


def test_negative_repeat_is_refused(mlp_artifact):
    assert_one_clean_error(run_cli("run", mlp_artifact, "--repeat", -3), "--repeat")


def test_more_threads_than_cpus_warns_and_runs_on_the_cpus_present(mlp_artifact):
    result = run_cli("run", mlp_artifact, "--threads", 100000, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "probs" in result.stdout
    [warning] = warning_lines(result)
    assert "100000 threads" in warning


def test_an_exported_thread_count_beyond_the_cpus_runs_without_a_word(mlp_artifact):
    """TVM_NUM_THREADS is the user's; a pool larger than the machine makes TVM say on stderr
    (from C++) that it cannot pin its threads, which relaycomp asks it not to."""
    env = {"TVM_NUM_THREADS": str((os.cpu_count() or 1) + 1)}
    result = run_cli("run", mlp_artifact, "--repeat", 3, env=env, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "probs" in result.stdout
    assert result.stderr.splitlines() == ["note: no --inputs given; running on seeded random data"]


@pytest.mark.parametrize("command", ["compile", "inspect"])
def test_input_dims_beyond_any_integer_type_are_refused(command, tmp_path):
    model = tmp_path / "dynamic.onnx"
    onnx.save(dynamic_reshape_net(), model)
    extra = ["-o", tmp_path / "d.so"] if command == "compile" else []
    result = run_cli(command, model, "--input", "x:99999999999999999999999,3,16,16", *extra)
    assert_one_clean_error(result, "too large")


# --- 4. output paths -------------------------------------------------------------------------


def test_prune_into_a_missing_folder_is_refused(mlp_file, tmp_path):
    result = run_cli("prune", mlp_file, "--ratio", 0.25, "-o", tmp_path / "missing" / "p.onnx")
    assert_one_clean_error(result, "does not exist")


def test_prune_replaces_the_output_instead_of_writing_into_it(mlp_file, tmp_path):
    output = tmp_path / "pruned.onnx"
    output.write_text("the previous model")
    os.link(output, tmp_path / "reader.onnx")  # stands for a reader holding the old file
    result = run_cli("prune", mlp_file, "--ratio", 0.25, "-o", output)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "reader.onnx").read_text() == "the previous model"
    onnx.checker.check_model(onnx.load(output))
    assert output.stat().st_mode & 0o777 == 0o666 & ~_umask()  # as a plain write would give
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned.onnx", "reader.onnx"]


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_run_outputs_into_a_missing_folder_is_refused(mlp_artifact, tmp_path):
    result = run_cli("run", mlp_artifact, "--outputs", tmp_path / "missing" / "o.npz")
    assert_one_clean_error(result, "does not exist")


def test_dump_ir_naming_a_file_is_refused(mlp_file, tmp_path):
    (tmp_path / "a_file").write_text("")
    result = run_cli("compile", mlp_file, "-o", tmp_path / "m.so", "--dump-ir",
                     tmp_path / "a_file")
    assert_one_clean_error(result, "--dump-ir", "not a folder")
    assert not (tmp_path / "m.so").exists()


# --- 5. manifests ----------------------------------------------------------------------------


def _edited(manifest: dict, case: str):
    if case == "binary bytes":
        return b"\x00\xff\xfe\x80 not json"
    if case == "a list":
        return json.dumps([manifest]).encode()
    if case == "no outputs":
        return json.dumps({**manifest, "outputs": []}).encode()
    if case in ("text as a shape", "an unknown dtype"):
        field = {"shape": "abc"} if case == "text as a shape" else {"dtype": "float33"}
        return json.dumps({**manifest, "inputs": [{**manifest["inputs"][0], **field}]}).encode()
    if case in ("other input shape", "other input shape, no digest"):
        inputs = [{**manifest["inputs"][0], "shape": [8, 64]}]
        record = {} if case.endswith("no digest") else manifest["artifact"]
        return json.dumps({**manifest, "inputs": inputs, "artifact": record}).encode()
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["binary bytes", "a list", "no outputs", "text as a shape",
                                  "an unknown dtype", "other input shape",
                                  "other input shape, no digest"])
def test_a_spoiled_manifest_is_refused(case, mlp_artifact, tmp_path):
    artifact = _copy_artifact(mlp_artifact, tmp_path, "spoiled")
    manifest = json.loads(manifest_path(artifact).read_text())
    manifest_path(artifact).write_bytes(_edited(manifest, case))
    assert_one_clean_error(run_cli("run", artifact))


# --- 6. truncated libraries ------------------------------------------------------------------


@pytest.mark.parametrize("recorded", [True, False], ids=["manifest-records-size", "old-manifest"])
def test_a_truncated_library_is_refused_before_loading(recorded, mlp_artifact, tmp_path):
    artifact = _copy_artifact(mlp_artifact, tmp_path, "half")
    os.truncate(artifact, artifact.stat().st_size // 2)
    if not recorded:  # a manifest from before sizes were recorded: the ELF check catches it
        manifest = json.loads(manifest_path(artifact).read_text())
        manifest_path(artifact).write_text(json.dumps({**manifest, "artifact": {}}))
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    result = run_cli("run", artifact, env={"TMPDIR": str(private_tmp)})
    assert_one_clean_error(result, "truncated")
    assert list(private_tmp.iterdir()) == []  # no private copy left behind


def test_a_replaced_library_is_refused(mlp_artifact, tmp_path):
    artifact = _copy_artifact(mlp_artifact, tmp_path, "replaced")
    data = bytearray(artifact.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    artifact.write_bytes(bytes(data))
    assert_one_clean_error(run_cli("run", artifact), "sha256")


# --- 7. tuning databases ---------------------------------------------------------------------


def _spoiled_database(root, case: str):
    run = root / target_key(targets.resolve("host").tvm_target()) / "run-spoiled"
    run.mkdir(parents=True)
    if case == "notes of the wrong shape":
        (run / NOTES).write_text('"a string"\n[1, 2]\n')
    elif case == "records of the wrong shape":
        (run / RECORDS).write_text('{"a": 1}\n')
    elif case == "undecodable bytes":
        (run / WORKLOADS).write_bytes(b"\xff\xfe\x00 garbage\n")
    elif case == "a folder for a file":
        (run / NOTES).mkdir()
    return root


@pytest.mark.parametrize("case", ["notes of the wrong shape", "records of the wrong shape",
                                  "undecodable bytes", "a folder for a file"])
def test_a_spoiled_tuning_database_is_refused(case, mlp_file, tmp_path):
    database = _spoiled_database(tmp_path / "db", case)
    result = run_cli("compile", mlp_file, "-o", tmp_path / "m.so", "--tuning-db", database)
    assert_one_clean_error(result, "run-spoiled")


# --- 8. target files -------------------------------------------------------------------------


def test_a_binary_target_file_is_refused(tmp_path, mlp_artifact):
    board = tmp_path / "board.toml"
    board.write_bytes(mlp_artifact.read_bytes()[:512])
    assert_one_clean_error(run_cli("passes", "--target", board), "board.toml")


# --- 9. evaluation labels and calibration data -----------------------------------------------


@pytest.mark.parametrize("labels", [np.full(8, 10), np.full(8, -1), np.array(["cat"] * 8),
                                    np.full(8, 1.5)],
                         ids=["out-of-range", "negative", "strings", "fractions"])
def test_bad_evaluation_labels_are_refused(labels, mlp_file, tmp_path):
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    np.savez(tmp_path / "eval.npz", x=x, labels=labels)
    result = run_cli("compile", mlp_file, "-o", tmp_path / "q.so", "--quantize", "int8",
                     "--calib", tmp_path / "calib.npz", "--eval", tmp_path / "eval.npz")
    assert_one_clean_error(result, "labels")


def test_all_zero_calibration_data_gives_one_warning_line(mlp_file, tmp_path):
    np.savez(tmp_path / "zeros.npz", x=np.zeros((8, 64), np.float32))
    result = run_cli("compile", mlp_file, "-o", tmp_path / "q.so", "--quantize", "int8",
                     "--calib", tmp_path / "zeros.npz")
    assert result.returncode == 0, result.stderr
    [warning] = warning_lines(result)
    assert "all zeros" in warning and "'x'" in warning


# --- 10. external data -----------------------------------------------------------------------


@pytest.mark.parametrize("case", ["outside the folder", "missing"])
def test_external_data_outside_the_folder_or_missing_is_refused(case, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    path = save_with_external_data(mlp(), model_dir / "m.onnx")
    if case == "missing":
        (model_dir / "m.onnx.data").unlink()
    else:
        shutil.move(model_dir / "m.onnx.data", tmp_path / "outside.data")
        model = onnx.load(path, load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = "../outside.data"
        onnx.save(model, path)
    assert_one_clean_error(run_cli("inspect", path), "external data")


def test_a_tracker_that_accepts_and_never_answers_is_one_error_line_not_a_hang(mlp_artifact):
    import socket
    import threading
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held = []
    accepting = threading.Thread(target=lambda: held.append(server.accept()), daemon=True)
    accepting.start()
    try:
        started = time.monotonic()
        result = run_cli("run", mlp_artifact, "--rpc", f"127.0.0.1:{server.getsockname()[1]}",
                         "--key", "board", timeout=60)
        assert time.monotonic() - started < 45
        assert_one_clean_error(result, "cannot reach the RPC tracker")
    finally:
        server.close()
        for connection, _ in held:
            connection.close()
