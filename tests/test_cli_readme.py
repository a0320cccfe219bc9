"""The README's command lines run as written: every ``relaycomp`` line of its shell blocks on
compiling (passes, quantization, bf16, the device bundle, target strings), in a folder holding the
files they name (``model.onnx`` is the digits example, ``samples.npz`` its calibration data,
``qdq_model.onnx`` a QDQ model from onnxruntime's quantizer, ``mypkg/`` a user's package).

The board-side lines of the bundle block (comments) run in ``test_bundle.py`` under qemu-user.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import run_cli

README = Path(__file__).resolve().parent.parent / "README.md"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def shell_lines(section: str) -> list[str]:
    """The ``relaycomp`` command lines of a README section's shell blocks (continuation lines
    joined, comments dropped)."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text[start:end], re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "relaycomp":
                lines.append(line)
    return lines


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    """A folder with the files the README's commands name."""
    from relaycomp.frontend.examples import resolve_model_path

    folder = tmp_path_factory.mktemp("readme")
    shutil.copy(resolve_model_path("example:digits"), folder / "model.onnx")
    samples = np.load(resolve_model_path("example:digits").parent / "digits_samples.npz")
    np.savez(folder / "samples.npz", input=samples["calibration"])
    shutil.copytree(EXAMPLES, folder / "examples")
    (folder / "mypkg").mkdir()
    (folder / "mypkg" / "__init__.py").write_text("")
    (folder / "mypkg" / "passes.py").write_text(
        "def my_pass(mod):\n    return mod\n")
    _qdq_model(folder / "model.onnx", folder / "samples.npz", folder / "qdq_model.onnx")
    return folder


def _qdq_model(source: Path, samples: Path, output: Path) -> None:
    onnxruntime_quantization = pytest.importorskip("onnxruntime.quantization")

    class Reader(onnxruntime_quantization.CalibrationDataReader):
        def __init__(self):
            self._batches = iter({"input": x[None]} for x in np.load(samples)["input"])

        def get_next(self):
            return next(self._batches, None)

    onnxruntime_quantization.quantize_static(str(source), str(output), Reader(),
                                             quant_format=onnxruntime_quantization.QuantFormat.QDQ)
    onnx.checker.check_model(onnx.load(output))


SECTIONS = ["Passes and the pipeline", "Quantization (int8)", "bf16",
            "On the board, without Python", "Targets"]


@pytest.mark.slow  # about a dozen compiles
@pytest.mark.parametrize("section", SECTIONS)
def test_the_readme_command_lines_run_as_written(section, user_folder):
    lines = shell_lines(section)
    assert lines, f"no relaycomp line in {section}"
    if section == "On the board, without Python" and not shutil.which("aarch64-linux-gnu-g++"):
        pytest.skip("the bundle is for a Raspberry Pi 4: apt-get install g++-aarch64-linux-gnu")
    if section == "bf16" and "avx512_bf16" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("the bf16 line compiles for this machine, which lacks AVX-512 BF16")
    if any("aarch64" in line or "raspberry-pi" in line for line in lines) and \
            not shutil.which("aarch64-linux-gnu-gcc"):
        pytest.skip("cross-compiles for aarch64: apt-get install gcc-aarch64-linux-gnu")
    for line in lines:
        result = run_cli(*shlex.split(line, comments=True)[1:], cwd=user_folder)
        assert result.returncode == 0, f"{line}\n{result.stderr}"
        assert "compiled" in result.stdout or "wrote" in result.stdout, line
