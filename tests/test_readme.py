"""The README's Python API example runs as written."""

import re
import shutil
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"## {section}\n")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], re.DOTALL)


def test_the_python_api_example_runs(tmp_path, monkeypatch):
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("the example cross-compiles for aarch64: apt-get install gcc-aarch64-linux-gnu")
    monkeypatch.chdir(tmp_path)
    (block,) = _python_blocks("Python API")
    exec(compile(block, "README.md", "exec"), {})  # noqa: S102 - the README is ours
    assert (tmp_path / "digits.so").is_file() and (tmp_path / "digits-arm.so").is_file()


@pytest.mark.parametrize("section", ["Passes and the pipeline", "Quantization (int8)",
                                     "bf16", "Distillation"])
def test_the_other_python_blocks_run_as_written(section, tmp_path, monkeypatch):
    from relaycomp.registry import PASSES

    monkeypatch.chdir(tmp_path)
    blocks = _python_blocks(section)
    assert blocks
    with PASSES.scoped():  # a block may register a pass: forget it afterwards
        for block in blocks:
            exec(compile(block, "README.md", "exec"), {})  # noqa: S102 - the README is ours
