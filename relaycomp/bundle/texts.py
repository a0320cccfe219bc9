"""The bundle's text files: ``signature.txt`` (what the runner reads), ``run.sh`` and the board's
``README.md``."""

from __future__ import annotations

from pathlib import Path

from relaycomp.compiler.manifest import Manifest
from relaycomp.targets import TargetSpec

RUN_SH = """#!/bin/sh
# Run the model with TVM's C++ runtime (no Python):
#   ./run.sh [INPUTS.npz | FOLDER of NAME.npy] [OUTPUT_DIR] [--repeat N] [--warmup N]
# Defaults: example_inputs.npz, ./outputs. Threads: TVM_NUM_THREADS (default: all cores).
set -e
here=$(cd "$(dirname "$0")" && pwd)
inputs="$here/example_inputs.npz"
outputs=outputs
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then inputs=$1; shift; fi
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then outputs=$1; shift; fi
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
exec "$here/relaycomp-runner" "$here/model.so" "$here/signature.txt" "$inputs" "$outputs" "$@"
"""


def signature_text(manifest: Manifest) -> str:
    """One line per tensor: ``input|output NAME DTYPE D0,D1,...`` (symbolic output dims by
    name), in the order the model takes and returns them."""
    lines = []
    for role, specs in (("input", manifest.inputs), ("output", manifest.outputs)):
        for spec in specs:
            dims = ",".join(str(d) for d in spec.shape) or "-"
            lines.append(f"{role} {spec.name} {spec.dtype} {dims}")
    return "\n".join(lines) + "\n"


def _tensors(specs) -> str:
    return "\n".join(f"| `{s.name}` | {s.dtype} | {list(s.shape)} |" for s in specs)


def _copy_and_run(spec: TargetSpec, folder: str) -> str:
    """How to copy the folder to the board and run it there: adb for Android (whose shell is
    /system/bin/sh, so run.sh goes through `sh`), scp and ssh elsewhere."""
    if "-linux-android" in spec.triple:
        return (f"adb push {folder} /data/local/tmp/{folder}\n"
                f"adb shell 'cd /data/local/tmp/{folder} && sh run.sh'")
    return f"scp -r {folder}/ pi@board:~/{folder}\nssh pi@board 'cd ~/{folder} && ./run.sh'"


def readme_text(manifest: Manifest, spec: TargetSpec, libraries: list[str], build: str,
                folder: str = "bundle") -> str:
    """The board's README: what is in the folder, how to copy and run it, what it prints."""
    source = Path(manifest.source["file"]).name if "file" in manifest.source else "The model"
    outputs = "\n".join(f"output {s.name}: {s.dtype}{list(s.shape)} -> outputs/{s.name}.npy"
                        for s in manifest.outputs)
    return f"""# {source} for {spec.name} ({spec.triple})

Everything this board needs to run the model, without Python: the model library compiled by
relaycomp, TVM's runtime for {spec.machine} and a small C++ runner built for it.

| file | what |
|---|---|
| `model.so`, `model.so.json` | the compiled model (a Relax VM executable) and its manifest |
| `lib/` | TVM's runtime: {", ".join(f"`{name}`" for name in libraries)} |
| `relaycomp-runner` | the runner, prebuilt for {spec.triple} |
| `runner/` | its source, tvm-ffi's headers and `build.sh` to rebuild it on the board |
| `signature.txt` | the inputs and outputs the runner checks and names |
| `example_inputs.npz` | seeded random inputs of the right shapes |
| `run.sh` | the run command below |

Inputs:

| name | dtype | shape |
|---|---|---|
{_tensors(manifest.inputs)}

Outputs:

| name | dtype | shape |
|---|---|---|
{_tensors(manifest.outputs)}

## Run

Copy the folder to the board and run it there:

```sh
{_copy_and_run(spec, folder)}
```

`./run.sh INPUTS OUTPUT_DIR --repeat N` takes a `.npz` keyed by input name (`np.savez`, not
`savez_compressed`) or a folder with one `NAME.npy` per input, writes `OUTPUT_DIR/NAME.npy` per
output and prints the median latency of N runs of the model (inputs already in memory). It sets
`LD_LIBRARY_PATH` to `lib/`; the runner also finds `lib/` by itself (its rpath is `$ORIGIN/lib`),
so `./relaycomp-runner model.so signature.txt INPUTS OUTPUT_DIR` works as well. Threads: set
`TVM_NUM_THREADS` (default: one per core). Expected output:

```
{outputs}
latency: median 1.234 ms, min 1.200 ms over 20 runs (after 3 warm-up)
```

(with this board's times). Errors are one `relaycomp-runner: error: ...` line and exit status 1.

## Rebuild the runner

On the board, with a C++17 compiler: `sh runner/build.sh` runs

```sh
{build}
```
"""


def build_script(command: str) -> str:
    """``runner/build.sh``: rebuild the runner on the board (run from anywhere)."""
    return f"""#!/bin/sh
# Rebuild relaycomp-runner with this machine's C++ compiler (CXX, default g++).
set -e
cd "$(dirname "$0")/.."
{command}
"""
