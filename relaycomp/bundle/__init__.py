"""Device bundles: a folder a board runs a compiled model from, without Python.

::

    artifact = relaycomp.compile_model("model.onnx", "model.so",
                                       CompileConfig(target="raspberry-pi-4"))
    bundle = write_bundle(artifact.path, "model-rpi4")   # then on the board: ./run.sh

The folder holds the model library and its manifest, TVM's runtime libraries for the target's
architecture (``runtime_libs``), a C++ runner (source in ``runner/``, prebuilt with the target's
C++ compiler, ``compiler``) that loads the model with TVM's Relax VM, reads ``.npy``/``.npz``
inputs, writes ``.npy`` outputs and prints the latency, plus ``run.sh`` and a README.
"""

from relaycomp.bundle.runtime_libs import BundleError, runtime_libraries
from relaycomp.bundle.writer import Bundle, check_folder, check_target, write_bundle

__all__ = ["Bundle", "BundleError", "check_folder", "check_target", "runtime_libraries",
           "write_bundle"]
