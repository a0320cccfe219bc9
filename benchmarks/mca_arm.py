"""Static estimate of the Arm kernels: llvm-mca on the innermost loops of a ``cortex-a76`` build.

There is no Arm board here, but the cross-compiled aarch64 assembly can be read. For ResNet-18's
fp32 and int8 (``r18_qdq.onnx``) 3x3 convs (the tile products of those lowered to Winograd) and
MobileNetV2's largest depthwise conv, each kernel
of the scheduled module (``profile_kernels.scheduled_module``) is built alone for the target, the
innermost loop (the basic block with the most ``fmla``/``sdot``) is cut out of its assembly and
handed to llvm-mca with LLVM 19's Neoverse-N1 model - the server twin of the Cortex-A76: two
128-bit FMA / dot-product pipes, so a peak of 16 fp32 FLOP/cycle and 64 int8 ops/cycle (``sdot``
multiplies and adds 16 byte pairs). L1 hits are assumed: a bound on the loop's code, not a
measurement. Prints per loop the instructions, the cycles per iteration, the share of the peak
and the q-registers spilled to or reloaded from the stack.

LLVM 14's ``-mcpu=cortex-a76`` silently falls back to the Cortex-A57 model (one 128-bit FMA per
cycle), so LLVM 19's llvm-mca is required: ``--llvm-mca``, ``llvm-mca-19`` on PATH, or Debian's
``llvm-19`` and ``libllvm19`` packages, downloaded and unpacked (``apt-get download``,
``dpkg -x``; no root needed) into ``~/.cache/relaycomp/llvm19`` on first use.

    python benchmarks/mca_arm.py [--target cortex-a76] [--llvm-mca PATH] [--show-loops]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import MODELS_DIR
from profile_kernels import scheduled_module

MCA_CPU = "neoverse-n1"
PEAK = {"fp32": 16, "int8": 64}  # per cycle: 2 pipes x 4 lanes x 2 FLOP; 2 x 16 x 2 ops
CACHE = Path.home() / ".cache" / "relaycomp" / "llvm19"
ITERATIONS = 200

# Vector arithmetic: mnemonic, element count of the destination, and the ops per element.
_VECTOR_OP = re.compile(r"^\s*(fmla|fmls|fmul|fadd|sdot|udot)\s+v\d+\.(\d+)([sbh])")
_SCALAR_FMA = re.compile(r"^\s*(fmadd|fmla)\s+s\d+")
_BRANCH = re.compile(r"^\s+(b\.\w+|cbn?z|tbn?z|b)\s.*$", re.MULTILINE)
_Q_STORE = re.compile(r"^\s*(stn?p|stu?r|st1)\s+(.*?)\[")  # the registers before the address
_SPILL = re.compile(r"^\s*(st|ld)(r|p|ur|1)\w*\s+[^\n]*\bq\d+[^\n]*\[sp\b", re.MULTILINE)


@dataclass(frozen=True)
class Loop:
    """One kernel's innermost loop and llvm-mca's verdict on it."""

    label: str
    kernel: str
    precision: str
    body: str
    ops: int  # FLOP (fp32) or multiply-add ops (int8) per iteration
    cycles: float  # per iteration
    spills: int

    @property
    def peak_share(self) -> float:
        return self.ops / self.cycles / PEAK[self.precision]


def hot_loop(asm: str) -> str:
    """The basic block with the most multiply-adds, up to its branch: the innermost loop."""
    blocks = re.split(r"^\.LBB\d+_\d+:.*$", asm, flags=re.MULTILINE)
    block = max(blocks, key=lambda text: sum(1 for line in text.splitlines()
                                             if _VECTOR_OP.match(line)))
    block = "\n".join(line.split("//")[0].rstrip() for line in block.splitlines())
    branch = _BRANCH.search(block)
    if branch:  # back to the loop's head
        block = block[:branch.start()] + re.sub(r"\.L\w+$", "hot_loop", branch[0])
    lines = [line for line in block.splitlines()
             if line.strip() and not line.strip().startswith(".")]
    return "\n".join(["hot_loop:", *lines])  # the branch back to the loop's head


def loop_ops(body: str, bias: bool = False) -> int:
    """FLOP (``fmla``: 2 per lane) or int8 ops (``sdot``: 8 per 32-bit lane) of one iteration.

    With ``bias`` (a kernel whose loop writes its outputs, bias add fused), the bias adds are
    counted as one FLOP per fp32 output written (four per q-register stored), however they are
    done - an ``fadd`` each, or the accumulator's start value (``bias_init``) - and ``fadd``s
    are not counted again: the work of the kernel, not of its instructions."""
    ops = 0
    for line in body.splitlines():
        if match := _VECTOR_OP.match(line):
            name, count = match[1], int(match[2])
            if name in ("sdot", "udot"):
                ops += 8 * count  # 4 byte products and their sum per int32 lane
            elif not (bias and name == "fadd"):
                ops += count * (2 if name in ("fmla", "fmls") else 1)
        elif _SCALAR_FMA.match(line):
            ops += 2
        elif bias and (match := _Q_STORE.match(line)):
            ops += 4 * len(re.findall(r"\bq\d+\b|\bv\d+\.4s", match[2]))
    return ops


def spills(body: str) -> int:
    """q-registers stored to or reloaded from the stack in ``body``."""
    return len(_SPILL.findall(body))


def find_llvm_mca(explicit: str | None) -> list[str]:
    """The command running LLVM 19's (or newer) llvm-mca, unpacking Debian's packages if need
    be. Exits with a one-line error when none can be had."""
    if explicit:
        return [explicit]
    for name in ("llvm-mca-21", "llvm-mca-20", "llvm-mca-19"):
        if found := shutil.which(name):
            return [found]
    binary = CACHE / "root" / "usr" / "lib" / "llvm-19" / "bin" / "llvm-mca"
    if not binary.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(["apt-get", "download", "llvm-19", "libllvm19"], cwd=CACHE, check=True,
                           capture_output=True, timeout=600)
            for deb in CACHE.glob("*.deb"):
                subprocess.run(["dpkg", "-x", str(deb), str(CACHE / "root")], check=True,
                               capture_output=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as error:
            sys.exit(f"mca_arm: error: cannot get LLVM 19's llvm-mca ({error}); "
                     "hint: pass --llvm-mca PATH to an llvm-mca of LLVM 19 or newer")
    return [str(binary)]


def _mca_env(command: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    if str(CACHE) in command[0]:  # the unpacked package: its libLLVM sits beside it
        lib = CACHE / "root" / "usr" / "lib"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(lib / "x86_64-linux-gnu"), str(lib / "llvm-19" / "lib"),
             env.get("LD_LIBRARY_PATH", "")])
    return env


def check_version(command: list[str]) -> str:
    """llvm-mca's version line; exits when older than 19 (no Neoverse-N1/Cortex-A76 model)."""
    out = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60,
                         env=_mca_env(command), check=False).stdout
    match = re.search(r"LLVM version (\d+)\.[\d.]+", out)
    if not match or int(match[1]) < 19:
        sys.exit(f"mca_arm: error: {command[0]} is not LLVM 19 or newer; "
                 "hint: older models stand the Cortex-A76 in with the Cortex-A57's")
    return match[0]


def mca_cycles(command: list[str], body: str) -> float:
    """Cycles per iteration of ``body`` run as a loop on the Neoverse-N1 model."""
    result = subprocess.run(
        [*command, "-mtriple=aarch64", f"-mcpu={MCA_CPU}", f"-iterations={ITERATIONS}"],
        input=body, capture_output=True, text=True, timeout=120, env=_mca_env(command),
        check=False)
    if result.returncode:
        sys.exit(f"mca_arm: error: llvm-mca failed: {result.stderr.strip().splitlines()[0]}")
    total = int(re.search(r"Total Cycles:\s+(\d+)", result.stdout)[1])
    return total / ITERATIONS


def kernel_assembly(func, target) -> str:
    """``func`` built alone for ``target`` (cross-compiled), as assembly."""
    import tvm
    from tvm.driver import build as tvm_build

    module = tvm_build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                       target=target)
    return module.inspect_source("asm")


def _window(func) -> tuple[tuple[int, ...], int] | None:
    """``(out_channels, in_channels, kh, kw)`` of the conv weight among ``func``'s parameters
    (plain ``OIHW``, blocked ``OIHWio`` or the int8 prepacked layout) and the stride (the data,
    the parameter before the weight, against the output), else ``None``."""
    for position, param in enumerate(func.params):
        shape = [int(d) for d in param.shape]
        if (position and len(shape) >= 4 and shape[2] == shape[3] and shape[2] in (3, 7)
                and shape[0] > 1):
            width = int(func.params[position - 1].shape[3])
            return tuple(shape[:4]), max(width // int(func.params[-1].shape[3]), 1)
    return None


def conv_kernels(mod, want: str) -> list[tuple[str, str]]:
    """``(label, kernel name)`` of the 3x3 convs (``want="3x3"``: one per distinct weight and
    output shape) or of the depthwise conv with the most multiply-adds (``"depthwise"``)."""
    from relaycomp import ir

    names = dict.fromkeys(call.args[0].name_hint for call in ir.kernel_calls(mod))
    found, seen = [], set()
    for name in names:
        func = mod[name]
        if want == "3x3" and name.startswith("winograd_products"):
            # a Winograd conv's tile products: [alpha^2 x tiles x C] @ [alpha^2 x C x K]
            products = "x".join(str(int(d)) for d in func.params[-1].shape)
            found.append((f"{products} winograd", name))
            continue
        found_window = _window(func) if "conv2d" in name else None
        if found_window is None or found_window[0][2] != 3:
            continue
        window, stride = found_window
        out = tuple(int(d) for d in func.params[-1].shape)
        weight = next(param for param in func.params
                      if tuple(int(d) for d in param.shape[:4]) == window)
        # OIHW [C, 1, kh, kw] or blocked OIHWio [C/b, 1, kh, kw, 1, b] (NCHW[b]c)
        depthwise = window[1] == 1 and (len(weight.shape) == 4 or int(weight.shape[4]) == 1)
        if (want == "depthwise") != depthwise or (window, out) in seen:
            continue
        seen.add((window, out))
        found.append((f"{'x'.join(map(str, out[1:]))} s{stride}", name))
    if want == "depthwise" and found:
        def macs(item):
            return math.prod(int(d) for d in mod[item[1]].params[-1].shape)
        found = [max(found, key=macs)]
    return found


def analyze(model: Path, precision: str, want: str, target_name: str,
            command: list[str]) -> list[Loop]:
    """The loops of ``model``'s kernels of kind ``want``."""
    mod, target = scheduled_module(model, quantize=False, preset=target_name)
    loops = []
    for label, name in conv_kernels(mod, want):
        body = hot_loop(kernel_assembly(mod[name], target))
        bias = want == "depthwise" and re.search(r"_add\d*(_|$)", name) is not None
        loops.append(Loop(f"{model.stem} {label}", name, precision, body, loop_ops(body, bias),
                          mca_cycles(command, body), spills(body)))
    return loops


def main(argv: list[str] | None = None) -> None:
    """Print the table; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="cortex-a76", help="an aarch64 target preset")
    parser.add_argument("--llvm-mca", help="llvm-mca of LLVM 19 or newer")
    parser.add_argument("--show-loops", action="store_true", help="print each loop's assembly")
    parser.add_argument("--only", choices=["fp32", "int8", "depthwise"],
                        help="only ResNet-18's fp32 or int8 convs, or the depthwise conv")
    args = parser.parse_args(argv)
    command = find_llvm_mca(args.llvm_mca)
    version = check_version(command)
    print(f"llvm-mca ({version}), -mcpu={MCA_CPU} model, target preset {args.target}; "
          f"peak 16 fp32 FLOP/cycle, 64 int8 ops/cycle; L1 hits assumed")
    jobs = [("resnet18.onnx", "fp32", "3x3"), ("r18_qdq.onnx", "int8", "3x3"),
            ("mobilenet_v2.onnx", "fp32", "depthwise")]
    print(f"{'loop (output shape)':<28} {'prec':<5} {'instr':>5} {'cyc/it':>7} {'ops/cyc':>7} "
          f"{'peak':>6} {'spills':>6}  kernel")
    for file, precision, want in jobs:
        if args.only and args.only not in (precision, want) or (args.only == "fp32"
                                                                 and want == "depthwise"):
            continue
        for loop in analyze(MODELS_DIR / file, precision, want, args.target, command):
            instructions = len(loop.body.splitlines())
            print(f"{loop.label:<28} {precision:<5} {instructions:>5} {loop.cycles:>7.2f} "
                  f"{loop.ops / loop.cycles:>7.2f} {loop.peak_share:>6.1%} {loop.spills:>6}  "
                  f"{loop.kernel[:60]}")
            if args.show_loops:
                print(loop.body)


if __name__ == "__main__":
    main()
