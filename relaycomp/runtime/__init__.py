"""Running artifacts: on this machine, over TVM RPC, on an emulated device; reference runs."""

from relaycomp.runtime.local import LoadedModel, load

__all__ = ["LoadedModel", "load"]
