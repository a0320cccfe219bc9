"""relaycomp's built-in IR passes, one file each; importing this package registers them."""

from relaycomp.registry import register_pass

from . import schedule_gpu_default  # noqa: F401 - registers itself
from .schedule_cpu_loops import schedule_cpu_loops

register_pass("schedule_cpu_loops", stage="schedule", kinds=("llvm",))(schedule_cpu_loops)
