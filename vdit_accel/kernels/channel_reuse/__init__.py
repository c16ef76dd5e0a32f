"""Channel-block reuse attention (TimeRipple's kernel path): plan, reference, Triton kernel.

``naive.py`` defines the operation precisely (module docstring) and holds the plan and the PyTorch references;
``triton.py`` holds the kernel (imported only when it runs). Dispatch lives in :mod:`vdit_accel.kernels`.
"""

from .naive import (
    AXES,
    CRITERIA,
    ChannelReusePlan,
    apply_reuse,
    channel_reuse_plan,
    check_plan_for_triton,
    naive_channel_reuse_attention,
    naive_channel_reuse_scores,
    reuse_groups,
    sdpa_channel_reuse_attention,
)

__all__ = [
    "AXES",
    "CRITERIA",
    "ChannelReusePlan",
    "apply_reuse",
    "channel_reuse_plan",
    "check_plan_for_triton",
    "naive_channel_reuse_attention",
    "naive_channel_reuse_scores",
    "reuse_groups",
    "sdpa_channel_reuse_attention",
]
