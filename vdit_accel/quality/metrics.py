"""Video quality metrics: PSNR, SSIM, LPIPS (optional) and VBench's temporal flickering score.

Accepted video layouts (every function takes any of them; ``a`` and ``b`` may even mix them):

* ``torch.Tensor`` float, channel-first, values in [0, 1]: ``[F, C, H, W]`` or ``[B, F, C, H, W]`` — what
  ``pipe(..., output_type="pt").frames`` returns.
* ``numpy.ndarray`` float in [0, 1] or uint8 in [0, 255], channel-last: ``[F, H, W, C]`` or ``[B, F, H, W, C]`` —
  what ``output_type="np"`` returns (float) or what a video reader returns (uint8).
* uint8 ``torch.Tensor`` is read channel-first like float tensors, and scaled by 1/255.

All metrics are computed per video and averaged over the batch.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch

__all__ = [
    "compare_videos",
    "lpips",
    "lpips_unavailable_reason",
    "psnr",
    "ssim",
    "temporal_flicker",
    "to_video_tensor",
]


def to_video_tensor(video: Any, name: str = "video") -> torch.Tensor:
    """Convert any accepted layout to a float32 CPU tensor ``[B, F, C, H, W]`` in [0, 1].

    Raises:
        TypeError / ValueError naming ``name`` when the input is not a 4-D/5-D video of 1 or 3 channels.
    """
    if isinstance(video, np.ndarray):
        arr = video
        if arr.ndim not in (4, 5):
            raise ValueError(f"`{name}` must be a numpy video [F, H, W, C] or [B, F, H, W, C], got shape {arr.shape}.")
        if arr.shape[-1] not in (1, 3):
            raise ValueError(f"`{name}` (numpy) must be channel-last with 1 or 3 channels, got shape {arr.shape}.")
        t = torch.from_numpy(np.ascontiguousarray(arr))
        t = t.permute(*range(t.ndim - 3), t.ndim - 1, t.ndim - 3, t.ndim - 2)  # ... H W C -> ... C H W
    elif isinstance(video, torch.Tensor):
        t = video.detach().cpu()
        if t.ndim not in (4, 5):
            raise ValueError(f"`{name}` must be a tensor video [F, C, H, W] or [B, F, C, H, W], got shape "
                             f"{tuple(t.shape)}.")
        if t.shape[-3] not in (1, 3):
            raise ValueError(f"`{name}` (torch) must be channel-first with 1 or 3 channels, got shape "
                             f"{tuple(t.shape)}.")
    else:
        raise TypeError(f"`{name}` must be a torch.Tensor or numpy.ndarray video, got {type(video).__name__}.")
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.is_floating_point():
        t = t.float()
    else:
        raise TypeError(f"`{name}` must be float (values in [0, 1]) or uint8, got dtype {t.dtype}.")
    if t.ndim == 4:
        t = t.unsqueeze(0)
    return t.contiguous()


def _pair(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    ta, tb = to_video_tensor(a, "a"), to_video_tensor(b, "b")
    if ta.shape != tb.shape:
        raise ValueError(f"`a` and `b` must have the same video shape [B, F, C, H, W], got `a` {tuple(ta.shape)} "
                         f"and `b` {tuple(tb.shape)}.")
    return ta, tb


def psnr(a: Any, b: Any, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10·log10(data_range² / MSE)`` per video, averaged over the batch.

    Identical videos give ``inf``. ``data_range`` is the value range of the float videos (uint8 inputs are scaled
    to [0, 1] first, so keep 1.0 for them).

    >>> import torch
    >>> round(psnr(torch.zeros(2, 3, 8, 8), torch.full((2, 3, 8, 8), 0.1)), 6)
    20.0
    """
    ta, tb = _pair(a, b)
    mse = (ta.double() - tb.double()).pow(2).flatten(1).mean(dim=1)
    vals = [math.inf if m == 0 else 10.0 * math.log10(data_range**2 / float(m)) for m in mse]
    return float(np.mean(vals))


def ssim(a: Any, b: Any, data_range: float = 1.0, win_size: int = 11) -> float:
    """Structural similarity (``pytorch_msssim.ssim``, Gaussian window σ=1.5) over all frames, averaged.

    ``win_size`` shrinks to the largest odd size that fits frames smaller than 11 px. Identical videos give 1.0.
    """
    try:
        from pytorch_msssim import ssim as _ssim
    except ImportError as e:  # pragma: no cover - pytorch-msssim is a core dependency
        raise ImportError("SSIM needs pytorch-msssim: pip install pytorch-msssim") from e
    ta, tb = _pair(a, b)
    b_, f_, c_, h_, w_ = ta.shape
    win = min(win_size, h_, w_)
    win = win if win % 2 == 1 else win - 1
    if win < 1:
        raise ValueError(f"frames of {h_}x{w_} px are too small for SSIM.")
    val = _ssim(ta.reshape(b_ * f_, c_, h_, w_), tb.reshape(b_ * f_, c_, h_, w_), data_range=data_range,
                size_average=True, win_size=win)
    return float(val)


# ---------------------------------------------------------------------------------------------------------------
# LPIPS (optional): needs the `lpips` package, a working torchvision, and the backbone weights already cached.
# ---------------------------------------------------------------------------------------------------------------
_LPIPS_MODEL = None
_LPIPS_REASON: str | None = None
_ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # what lpips(net="alex") makes torchvision load


def _load_lpips():
    global _LPIPS_MODEL, _LPIPS_REASON
    if _LPIPS_MODEL is not None or _LPIPS_REASON is not None:
        return _LPIPS_MODEL
    try:
        import lpips as _lp  # noqa: F401  (imports torchvision)
    except Exception as e:  # ImportError, or torchvision's "operator torchvision::nms does not exist"
        _LPIPS_REASON = f"the `lpips` package (with a working torchvision) is unavailable: {type(e).__name__}: {e}"
        return None
    ckpt = os.path.join(torch.hub.get_dir(), "checkpoints", _ALEXNET_FILE)
    if not os.path.exists(ckpt):
        # Never download implicitly: metrics must behave the same offline and online.
        _LPIPS_REASON = f"LPIPS backbone weights not found at {ckpt} (they are not downloaded automatically)"
        return None
    try:
        import lpips as _lp

        _LPIPS_MODEL = _lp.LPIPS(net="alex", verbose=False).eval()
    except Exception as e:
        _LPIPS_REASON = f"LPIPS failed to load: {type(e).__name__}: {e}"
        return None
    return _LPIPS_MODEL


def lpips_unavailable_reason() -> str | None:
    """Why :func:`lpips` returns None (``None`` when LPIPS works)."""
    _load_lpips()
    return _LPIPS_REASON


def lpips(a: Any, b: Any) -> float | None:
    """LPIPS (AlexNet) distance averaged over frames, or ``None`` when LPIPS is unavailable here.

    The reason is in :func:`lpips_unavailable_reason`. Lower is better; 0 for identical videos.
    """
    ta, tb = _pair(a, b)
    model = _load_lpips()
    if model is None:
        return None
    b_, f_, c_, h_, w_ = ta.shape
    x = ta.reshape(b_ * f_, c_, h_, w_) * 2 - 1
    y = tb.reshape(b_ * f_, c_, h_, w_) * 2 - 1
    if c_ == 1:
        x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
    with torch.no_grad():
        return float(model(x, y).mean())


# ---------------------------------------------------------------------------------------------------------------
# VBench temporal flickering
# ---------------------------------------------------------------------------------------------------------------
def _to_uint8_frames(video: Any, name: str) -> np.ndarray:
    """uint8 ``[B, F, H, W, C]``; floats are quantised like diffusers' ``export_to_video`` (``(x*255).astype(uint8)``)."""
    if isinstance(video, np.ndarray) and video.dtype == np.uint8:
        if video.ndim not in (4, 5) or video.shape[-1] not in (1, 3):
            raise ValueError(f"`{name}` must be a uint8 video [F, H, W, C] or [B, F, H, W, C], got {video.shape}.")
        return video[None] if video.ndim == 4 else video
    t = to_video_tensor(video, name)  # [B, F, C, H, W] float in [0, 1]
    arr = t.clamp(0, 1).permute(0, 1, 3, 4, 2).numpy()
    return (arr * 255).astype(np.uint8)


def temporal_flicker(video: Any) -> float:
    """VBench 0.1.5 ``temporal_flickering`` score in [0, 1]; 1.0 for a static video, higher is steadier.

    Exactly VBench's ``cal_score`` per video: frames as uint8, ``MAE_i`` = mean absolute difference of frames i and
    i+1 over all pixels and channels (float32), score = ``(255 - mean_i MAE_i) / 255``; a batch gives the mean over
    videos (VBench's ``avg_score``). VBench reads the frames back from an mp4, so on compressed files its numbers
    differ by the codec's error; on the same uint8 frames they are identical.

    >>> import numpy as np
    >>> v = np.zeros((3, 4, 4, 3), np.uint8); v[1] = 51       # frames 0, 51, 0: MAE 51 twice
    >>> round(temporal_flicker(v), 6)
    0.8
    """
    frames = _to_uint8_frames(video, "video")
    if frames.shape[1] < 2:
        raise ValueError(f"`video` needs at least 2 frames for temporal flickering, got {frames.shape[1]}.")
    scores = []
    for vid in frames:
        f32 = vid.astype(np.float32)
        maes = [float(np.mean(np.abs(f32[i] - f32[i + 1]))) for i in range(len(f32) - 1)]
        scores.append((255.0 - float(np.mean(np.array(maes)))) / 255.0)
    return float(np.mean(scores))


def compare_videos(reference: Any, candidate: Any, data_range: float = 1.0) -> dict[str, Any]:
    """All metrics of ``candidate`` against ``reference`` (e.g. accelerated vs dense output of the same seed).

    Returns:
        ``{"psnr": dB, "ssim": float, "lpips": float | None, "lpips_unavailable_reason": str | None,
        "flicker_reference": float, "flicker_candidate": float}``
    """
    ref, cand = _pair(reference, candidate)
    lp = lpips(ref, cand)
    return {
        "psnr": psnr(ref, cand, data_range=data_range),
        "ssim": ssim(ref, cand, data_range=data_range),
        "lpips": lp,
        "lpips_unavailable_reason": None if lp is not None else lpips_unavailable_reason(),
        "flicker_reference": temporal_flicker(ref),
        "flicker_candidate": temporal_flicker(cand),
    }
