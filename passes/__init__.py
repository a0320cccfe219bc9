"""relaycomp's built-in IR passes, one file each; importing this package registers them."""

from relaycomp.passes import (  # noqa: F401 - importing registers them
    apply_tuning_database,
    convert_to_bf16,
    decompose_conv_transpose,
    fold_batchnorm,
    fuse_by_pattern,
    legalize_blocked_convs,
    legalize_layout_transforms,
    lower_qdq_to_integer,
    mark_pair_safe_weights,
    merge_parallel_convs,
    merge_parallel_matmuls,
    plan_conv_layout,
    propagate_nan_in_max_min,
    prune_channels,
    quantize_int8,
    reduce_from_infinity,
    remove_noop_ops,
    schedule_cpu_loops,
    schedule_gpu_default,
    unstack_max_min,
)
