"""relaycomp.targets: names → TVM targets and toolchains, presets as data, ELF checks."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import tvm
from tvm.script import relax as R
from tvm.target import codegen

from relaycomp import targets
from relaycomp.errors import ArtifactError, TargetError

# "from relaycomp import targets", not "from relaycomp.targets import …": the package lives in
# targets/, so isort tools without known-first-party config would file it as third-party.
TRIPLE_NAMES = targets.triples.triple_names()

KNOWN_NAMES = ["host", *TRIPLE_NAMES, "cuda", *targets.PRESETS.names()]


def _host_has(feature: str) -> bool:
    detected = tvm.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures")()
    return bool(detected.get(feature, False))


# --- every target is a valid TVM target -----------------------------------------------------


@pytest.mark.parametrize("name", KNOWN_NAMES)
def test_every_known_target_builds_a_tvm_target(name):
    spec = targets.resolve(name)
    target = spec.tvm_target()
    assert str(target.kind.name) == spec.kind
    if spec.host is not None:
        assert str(target.host.kind.name) == "llvm"


@pytest.mark.parametrize("spec", targets.known_targets(), ids=lambda spec: spec.name)
def test_every_cpu_side_names_an_mcpu_llvm_knows(spec):
    for cpu_side in filter(None, [spec.host, spec.target]):
        if "mcpu" in cpu_side:
            assert codegen.llvm_is_valid_cpu(cpu_side["mcpu"], cpu_side["mtriple"])


def test_known_targets_cover_host_every_triple_and_every_preset():
    names = {spec.name for spec in targets.known_targets()}
    assert names == {"host", *TRIPLE_NAMES, *targets.PRESETS.names()}
    assert {
        "x86-64-avx2", "x86-64-avx512", "cortex-a53", "cortex-a72", "raspberry-pi-4",
        "cortex-a76", "raspberry-pi-5", "neoverse-n1", "aws-graviton2", "jetson-orin",
        "a100", "h100",
    } <= names  # fmt: skip


# --- presets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, triple, mcpu, num_cores",
    [
        ("x86-64-avx2", "x86_64-linux-gnu", "haswell", None),
        ("x86-64-avx512", "x86_64-linux-gnu", "cascadelake", None),
        ("cortex-a53", "aarch64-linux-gnu", "cortex-a53", None),
        ("raspberry-pi-4", "aarch64-linux-gnu", "cortex-a72", 4),
        ("raspberry-pi-4-32bit", "armv7a-linux-gnueabihf", "cortex-a72", 4),
        ("raspberry-pi-5", "aarch64-linux-gnu", "cortex-a76", 4),
        ("aws-graviton2", "aarch64-linux-gnu", "neoverse-n1", None),
    ],
)
def test_cpu_presets_resolve_to_their_triple_mcpu_and_cores(name, triple, mcpu, num_cores):
    spec = targets.resolve(name)
    assert (spec.kind, spec.triple, spec.host) == ("llvm", triple, None)
    assert spec.target["mtriple"] == triple
    assert spec.target["mcpu"] == mcpu
    # A preset without num-cores gets this machine's CPU count: MetaSchedule needs one.
    assert spec.target["num-cores"] == (num_cores or targets.host.default_num_cores())


@pytest.mark.parametrize(
    "name, arch, host_mtriple, host_mcpu",
    [
        ("jetson-orin", "sm_87", "aarch64-linux-gnu", "cortex-a78ae"),
        ("a100", "sm_80", "x86_64-linux-gnu", None),
        ("h100", "sm_90", "x86_64-linux-gnu", None),
    ],
)
def test_gpu_presets_resolve_to_arch_and_cpu_side(name, arch, host_mtriple, host_mcpu):
    spec = targets.resolve(name)
    assert (spec.kind, spec.triple) == ("cuda", "nvptx64-nvidia-cuda")
    assert spec.target == {"kind": "cuda", "arch": arch}
    assert spec.host["mtriple"] == host_mtriple
    assert spec.host.get("mcpu") == host_mcpu


def test_jetson_links_with_the_aarch64_cross_compiler():
    spec = targets.resolve("jetson-orin")
    assert spec.machine == "aarch64"
    assert spec.toolchain.compiler == "aarch64-linux-gnu-gcc"
    assert spec.host["num-cores"] == 12


def test_avx512_preset_has_vnni():
    features = codegen.llvm_get_cpu_features(targets.resolve("x86-64-avx512").tvm_target())
    assert {"avx512f", "avx512vnni"} <= features


def test_armv7_target_uses_the_hard_float_abi_its_linker_expects():
    spec = targets.resolve("armv7a-linux-gnueabihf")
    assert spec.target["mfloat-abi"] == "hard"
    assert "-mfloat-abi=hard" in spec.toolchain.options


def test_bundled_preset_files_are_named_after_their_board():
    for name in targets.PRESETS.names():
        assert targets.PRESETS.get(name).source.endswith(f"presets/{name}.toml")


# --- triples, cuda, host ---------------------------------------------------------------------


def test_cuda_defaults_to_sm80_with_this_machine_as_cpu_side():
    spec = targets.resolve("cuda")
    assert spec.target == {"kind": "cuda", "arch": "sm_80"}
    assert spec.host["mtriple"] == targets.host_triple()
    assert spec.toolchain.compiler is None  # linked by this machine's own compiler


def test_host_is_this_machine_and_runs_here():
    spec = targets.resolve("host")
    assert spec.triple == targets.host_triple()
    assert spec.target["num-cores"] >= 1
    assert spec.machine == targets.machine_of_triple(targets.host_triple())
    assert spec.runs_on_this_machine


@pytest.mark.parametrize(
    "name", ["aarch64-linux-gnu", "armv7a-linux-gnueabihf", "aarch64-linux-android"]
)
def test_targets_for_another_triple_do_not_run_here(name):
    if name == targets.host_triple():
        pytest.skip("this machine's own triple")
    assert not targets.resolve(name).runs_on_this_machine


@pytest.mark.skipif(targets.host_triple() != "x86_64-linux-gnu", reason="x86-64 host only")
def test_avx512_preset_runs_here_only_if_this_cpu_has_avx512():
    assert targets.resolve("x86-64-avx512").runs_on_this_machine == _host_has("avx512f")
    assert targets.resolve("x86-64-avx2").runs_on_this_machine == _host_has("avx2")


def test_gpu_targets_do_not_run_without_a_gpu():
    if tvm.cuda(0).exist:
        pytest.skip("a GPU is present")
    assert not targets.resolve("a100").runs_on_this_machine


# --- overrides and bad values ----------------------------------------------------------------


def test_overrides_replace_the_preset_values():
    spec = targets.resolve("raspberry-pi-4", mcpu="cortex-a53", num_cores=2)
    assert (spec.target["mcpu"], spec.target["num-cores"]) == ("cortex-a53", 2)
    assert targets.resolve("cuda", arch="sm_90").target["arch"] == "sm_90"
    assert targets.resolve("h100", arch="sm_90a").target["arch"] == "sm_90a"


def test_mcpu_override_of_a_gpu_target_sets_its_cpu_side():
    spec = targets.resolve("jetson-orin", mcpu="cortex-a78")
    assert spec.host["mcpu"] == "cortex-a78"
    assert spec.target["arch"] == "sm_87"


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("cuda", {"arch": "sm_x"}, "invalid CUDA arch 'sm_x'"),
        ("cuda", {"arch": "compute_80"}, "invalid CUDA arch"),
        ("raspberry-pi-4", {"mcpu": "cortex-z99"}, "mcpu 'cortex-z99'"),
        ("x86_64-linux-gnu", {"mcpu": "cortex-a72"}, "mcpu 'cortex-a72'"),
        ("raspberry-pi-4", {"arch": "sm_80"}, "'arch' does not apply to llvm targets"),
        ("raspberry-pi-4", {"num_cores": 0}, "'num-cores' must be a positive integer"),
    ],
)
def test_bad_values_raise_target_error(name, overrides, message):
    with pytest.raises(TargetError, match=message):
        targets.resolve(name, **overrides)


def test_unknown_name_error_names_it_and_lists_every_known_target():
    with pytest.raises(TargetError, match="unknown target 'raspberry-pi-9'") as caught:
        targets.resolve("raspberry-pi-9")
    for known in ["host", "cuda", *TRIPLE_NAMES, *targets.PRESETS.names()]:
        assert known in caught.value.hint


# --- a user's own board file -----------------------------------------------------------------


def test_a_user_toml_file_adds_a_board_without_code(tmp_path):
    board = tmp_path / "orange-pi-5.toml"
    board.write_text(
        'description = "Orange Pi 5 (RK3588)"\n'
        'triple = "aarch64-linux-gnu"\n'
        'mcpu = "cortex-a76"\n'
        'mattr = ["+dotprod"]\n'
        "num-cores = 8\n"
    )
    spec = targets.resolve(str(board))
    assert spec.name == str(board)
    assert spec.description == "Orange Pi 5 (RK3588)"
    assert spec.target["mcpu"] == "cortex-a76"
    assert spec.target["mattr"] == ["+neon", "+dotprod"]
    assert spec.target["num-cores"] == 8
    assert targets.load_preset(board).name == "orange-pi-5"


@pytest.mark.parametrize(
    "text, message",
    [
        ("triple = [\n", "not valid TOML"),
        ('triple = "aarch64-linux-gnu"\ncpu = "cortex-a72"\n', "unknown key 'cpu'"),
        ('description = "no triple"\n', "missing required key 'triple'"),
        ('triple = "riscv64-linux-gnu"\n', "unknown triple 'riscv64-linux-gnu'"),
        ('triple = "aarch64-linux-gnu"\nnum-cores = "4"\n', "'num-cores' must be"),
        ('triple = "aarch64-linux-gnu"\nmattr = "+neon"\n', "'mattr' must be a list"),
        ('triple = "aarch64-linux-gnu"\nmattr = ["+warp-drive"]\n', "mattr \\+warp-drive"),
        ('triple = "cuda"\narch = "sm_80"\nmcpu = "haswell"\n', "'mcpu' does not apply"),
        ('triple = "cuda"\nhost-triple = "cuda"\n', "host-triple 'nvptx64-nvidia-cuda' is not"),
    ],
)
def test_a_malformed_board_file_raises_target_error_naming_it(tmp_path, text, message):
    board = tmp_path / "broken.toml"
    board.write_text(text)
    with pytest.raises(TargetError, match=message) as caught:
        targets.resolve(str(board))
    assert str(board) in str(caught.value)


def test_a_missing_board_file_raises_target_error():
    with pytest.raises(TargetError, match="cannot read preset file"):
        targets.resolve("/nonexistent/board.toml")


# --- manifest round trip ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["host", "raspberry-pi-4-32bit", "jetson-orin"])
def test_spec_round_trips_through_json(name):
    spec = targets.resolve(name)
    assert targets.TargetSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_from_json_rejects_what_tvm_rejects():
    data = targets.resolve("raspberry-pi-4").to_json()
    data["target"]["num-cores"] = "four"
    with pytest.raises(TargetError, match="TVM rejects it"):
        targets.TargetSpec.from_json(data)
    with pytest.raises(TargetError, match="malformed"):
        targets.TargetSpec.from_json({"name": "x"})


# --- toolchains ------------------------------------------------------------------------------


def test_missing_cross_compiler_raises_target_error_with_apt_hint():
    toolchain = targets.Toolchain("sparc64-linux-gnu-gcc-nonexistent", "gcc-sparc64-linux-gnu")
    with pytest.raises(TargetError, match="'sparc64-linux-gnu-gcc-nonexistent' not found"):
        toolchain.find()
    with pytest.raises(TargetError) as caught:
        toolchain.fcompile()
    assert caught.value.hint == "install it: apt-get install gcc-sparc64-linux-gnu"


def test_android_ndk_clang_is_found_under_android_ndk_home(tmp_path, monkeypatch):
    bin_dir = tmp_path / "toolchains/llvm/prebuilt/linux-x86_64/bin"
    bin_dir.mkdir(parents=True)
    for api in (35, 21, 24):
        clang = bin_dir / f"aarch64-linux-android{api}-clang"
        clang.write_text("#!/bin/sh\n")
        clang.chmod(0o755)
    monkeypatch.setenv("ANDROID_NDK_HOME", str(tmp_path))
    found = targets.resolve("aarch64-linux-android").toolchain.find()
    assert found == str(bin_dir / "aarch64-linux-android21-clang")  # lowest API: most devices


def test_missing_android_ndk_hint_says_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("ANDROID_NDK_HOME", str(tmp_path))
    monkeypatch.delenv("ANDROID_NDK_ROOT", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    with pytest.raises(TargetError) as caught:
        targets.resolve("aarch64-linux-android").toolchain.find()
    assert "Android NDK" in caught.value.hint


# --- ELF machine of real libraries -----------------------------------------------------------


@pytest.mark.parametrize(
    "compiler, machine",
    [
        ("aarch64-linux-gnu-gcc", "aarch64"),
        ("arm-linux-gnueabihf-gcc", "arm"),
        ("cc", targets.machine_of_triple(targets.host_triple())),
    ],
)
def test_elf_machine_reads_the_architecture_of_a_shared_library(tmp_path, compiler, machine):
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not installed")
    source = tmp_path / "add.c"
    source.write_text("int add(int a, int b) { return a + b; }\n")
    library = tmp_path / "libadd.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", library, source], check=True)
    assert targets.elf_machine(library) == machine


def test_elf_machine_rejects_a_file_that_is_not_elf(tmp_path):
    text = tmp_path / "model.so"
    text.write_text("not a library")
    with pytest.raises(ArtifactError, match="not an ELF file"):
        targets.elf_machine(text)


@tvm.script.ir_module
class AddTwoTensors:
    @R.function
    def main(x: R.Tensor((4,), "float32"), y: R.Tensor((4,), "float32")):
        return R.add(x, y)


@pytest.mark.parametrize("name", ["raspberry-pi-4", "raspberry-pi-4-32bit", "host"])
def test_tvm_library_exported_with_the_spec_toolchain_is_for_its_machine(tmp_path, name):
    spec = targets.resolve(name)
    try:
        fcompile = spec.toolchain.fcompile()
    except TargetError as missing:
        pytest.skip(str(missing))
    library = tmp_path / "add.so"
    tvm.compile(AddTwoTensors, spec.tvm_target()).export_library(str(library), fcompile=fcompile)
    assert targets.elf_machine(library) == spec.machine
    if spec.runs_on_this_machine:
        vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
        ones = tvm.runtime.tensor(np.ones(4, "float32"))
        np.testing.assert_array_equal(vm["main"](ones, ones).numpy(), np.full(4, 2.0))
