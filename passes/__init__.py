"""relaycomp's built-in IR passes, one file each; importing this package registers them."""

from relaycomp.registry import register_pass

from . import (  # noqa: F401 - importing registers them
    fold_batchnorm,
    fuse_by_pattern,
    merge_parallel_convs,
    merge_parallel_matmuls,
    remove_noop_ops,
    schedule_gpu_default,
)
from .schedule_cpu_loops import schedule_cpu_loops

register_pass("schedule_cpu_loops", stage="schedule", kinds=("llvm",))(schedule_cpu_loops)
