"""relaycomp's built-in IR passes, one file each; importing this package registers them."""

from . import schedule_gpu_default  # noqa: F401
