"""Progress on a terminal: ``compile --quantize int8 --calib`` shows one tqdm bar over the
calibration and the accuracy guard's evaluation, counting what it really runs (a compile, then
each batch), under the compile's own bar (passes, code generation, export); on stderr only
when stderr is a terminal; stdout stays clean."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios

import numpy as np
import onnx
import pytest
from helpers import run_cli
from models import mlp


def run_with_terminal_stderr(*args) -> tuple[int, str, str]:
    """``relaycomp ARGS`` with stderr on a pseudo-terminal (120 columns): exit code, stdout and
    everything written to the terminal (carriage returns and escapes included)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    # TQDM_MININTERVAL=0: every update drawn (tqdm reads its defaults from TQDM_* variables),
    # so the frames show each count the bar reached
    process = subprocess.Popen([sys.executable, "-m", "relaycomp.cli", *map(str, args)],
                               stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL,
                               env={**os.environ, "TQDM_MININTERVAL": "0"})
    os.close(slave)
    terminal = bytearray()
    while True:
        ready, _, _ = select.select([master], [], [], 600)
        if not ready:
            process.kill()
            pytest.fail("no output for 10 minutes")
        try:
            chunk = os.read(master, 65536)
        except OSError:   # EIO: the child closed the terminal
            break
        if not chunk:
            break
        terminal += chunk
    stdout = process.stdout.read().decode()
    process.wait(timeout=60)
    os.close(master)
    return process.returncode, stdout, terminal.decode(errors="replace")


@pytest.fixture(scope="module")
def quantize_args(tmp_path_factory):
    folder = tmp_path_factory.mktemp("progress")
    onnx.save(mlp(), folder / "mlp.onnx")
    rng = np.random.default_rng(0)
    # mlp takes x[4, 64]: 6 calibration batches, 5 held-out batches
    np.savez(folder / "calib.npz", x=rng.standard_normal((6, 4, 64)).astype(np.float32))
    np.savez(folder / "eval.npz", x=rng.standard_normal((5, 4, 64)).astype(np.float32))
    return folder, ["compile", folder / "mlp.onnx", "--quantize", "int8", "--calib",
                    folder / "calib.npz", "--eval", folder / "eval.npz"]


def test_calibration_and_the_guard_show_one_bar_counting_compiles_and_batches(quantize_args):
    folder, args = quantize_args
    code, stdout, terminal = run_with_terminal_stderr(*args, "-o", folder / "tty.so")
    assert code == 0, terminal
    # calibration: its compile + 6 batches; then the guard: its compile + 5 float + 5 int8 runs
    frames = re.findall(r"int8 (calibration|accuracy check): +\d+%\|[^|]*\| *(\d+)/(\d+)",
                        terminal)
    calibration = [int(done) for phase, done, total in frames
                   if phase == "calibration" and total == "18"]
    check = [int(done) for phase, done, total in frames
             if phase == "accuracy check" and total == "18"]
    assert calibration == list(range(8)), terminal[-2000:]
    assert check == list(range(7, 19)), terminal[-2000:]
    # the compile's own bar: passes (the bar above runs inside them), code generation, export
    steps = re.findall(r"compile: (passes|code generation|export): +\d+%\|[^|]*\| *(\d)/3",
                       terminal)
    assert set(steps) == {("passes", "0"), ("code generation", "1"), ("export", "2"),
                          ("export", "3")}, terminal[-2000:]
    assert "it/s" not in stdout and "int8 calibration" not in stdout
    assert "compiled" in stdout


def test_without_a_terminal_there_is_no_bar(quantize_args, tmp_path):
    _, args = quantize_args
    result = run_cli(*args, "-o", tmp_path / "plain.so", "--json")
    assert result.returncode == 0, result.stderr
    assert "int8 calibration" not in result.stderr and "%|" not in result.stderr
    report = json.loads(result.stdout)["report"]["quantize"]
    # the batches the bar counts are the report's: 6 of 4 samples, 5 held out
    assert report["samples"]["calibration"] == 24
    assert report["evaluated_on"] == "5 held-out batch(es)"
