"""Quality metrics for comparing accelerated and dense video outputs.

``psnr``, ``ssim`` (pytorch-msssim), ``lpips`` (None when unavailable; see ``lpips_unavailable_reason``),
``temporal_flicker`` (VBench 0.1.5 ``temporal_flickering``) and ``compare_videos`` (all of them at once). Videos are
float tensors ``[F, C, H, W]`` / ``[B, F, C, H, W]`` in [0, 1], or numpy ``[F, H, W, C]`` / ``[B, F, H, W, C]``
(uint8 or float in [0, 1]); see :mod:`vdit_accel.quality.metrics`.

Importing this package is cheap: the metric module (torch, numpy) loads on first use, pytorch-msssim and lpips only
inside the functions that need them.

>>> from vdit_accel.quality import compare_videos
>>> import torch
>>> compare_videos(torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32))["psnr"] < 20
True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = [
    "compare_videos",
    "lpips",
    "lpips_unavailable_reason",
    "psnr",
    "ssim",
    "temporal_flicker",
    "to_video_tensor",
]

if TYPE_CHECKING:  # pragma: no cover
    from .metrics import compare_videos, lpips, lpips_unavailable_reason, psnr, ssim, temporal_flicker, to_video_tensor


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(".metrics", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
