"""compile + run: numerics against onnxruntime, cross builds, manifests, no half-written files."""

import json
import shutil

import pytest
from helpers import assert_matches_ort
from models import (
    conv_net,
    int64_inputs_net,
    mlp,
    mobilenet_style_net,
    multi_io_net,
    random_inputs,
    resnet_block_net,
)

import relaycomp
from relaycomp.compiler.manifest import manifest_path
from relaycomp.errors import BuildError, TargetError
from relaycomp.targets import elf_machine

MODELS = {
    "conv_net": conv_net, "resnet_block_net": resnet_block_net,
    "mobilenet_style_net": mobilenet_style_net, "mlp": mlp, "multi_io_net": multi_io_net,
    "int64_inputs_net": int64_inputs_net,
}


@pytest.mark.parametrize("name", MODELS)
def test_host_build_matches_onnxruntime(name, tmp_path):
    model = MODELS[name]()
    assert_matches_ort(model, random_inputs(model), tmp_path)


def test_manifest_records_signature_target_passes_and_versions(tmp_path):
    artifact = relaycomp.compile(multi_io_net(), tmp_path / "m.so")
    data = json.loads(manifest_path(artifact.path).read_text())
    assert [o["name"] for o in data["outputs"]] == [o.name for o in multi_io_net().graph.output]
    assert data["target"]["kind"] == "llvm"
    assert "schedule/schedule_cpu_loops" in data["passes"]
    assert data["versions"]["tvm"]
    assert data["artifact_format"] == "shared-library"


@pytest.mark.parametrize("target, machine, compiler", [
    ("aarch64-linux-gnu", "aarch64", "aarch64-linux-gnu-gcc"),
    ("raspberry-pi-4", "aarch64", "aarch64-linux-gnu-gcc"),
    ("armv7a-linux-gnueabihf", "arm", "arm-linux-gnueabihf-gcc"),
])
def test_cross_build_is_a_real_arm_elf(target, machine, compiler, tmp_path):
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not installed")
    artifact = relaycomp.compile(conv_net(), tmp_path / "m.so", target=target)
    assert elf_machine(artifact.path) == machine


def test_missing_cross_compiler_names_the_package_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TargetError) as info:
        relaycomp.compile(conv_net(), tmp_path / "m.so", target="aarch64-linux-gnu")
    assert "gcc-aarch64-linux-gnu" in info.value.hint
    assert not list(tmp_path.glob("m.so*"))


def test_object_archive_needs_no_cross_compiler(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("tar", "gzip"):  # TVM packs the objects with tar -z
        (bin_dir / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(bin_dir))
    artifact = relaycomp.compile(conv_net(), tmp_path / "m.tar", target="aarch64-linux-gnu")
    assert artifact.path.is_file() and manifest_path(artifact.path).is_file()
    assert artifact.manifest.artifact_format == "object-archive"


def test_cuda_build_contains_device_code(tmp_path):
    artifact = relaycomp.compile(mlp(), tmp_path / "m.so", target="cuda", arch="sm_80")
    assert artifact.path.stat().st_size > 0
    assert artifact.manifest.target["kind"] == "cuda"


def test_unwritable_output_folder_is_refused_before_compiling(tmp_path):
    with pytest.raises(BuildError, match="does not exist"):
        relaycomp.compile(conv_net(), tmp_path / "absent" / "m.so")


def test_unknown_artifact_suffix_is_refused(tmp_path):
    with pytest.raises(BuildError, match="artifact format"):
        relaycomp.compile(conv_net(), tmp_path / "m.bin")


def test_failed_build_leaves_no_files(tmp_path):
    from models import unsupported_op_net

    with pytest.raises(relaycomp.RelaycompError):
        relaycomp.compile(unsupported_op_net(), tmp_path / "m.so")
    assert list(tmp_path.iterdir()) == []
