"""Read generated clips back: where is the coloured object, what colour is it, which way does it move.

Backgrounds of the training data are achromatic and the objects saturated, so the object mask is simply "pixels
with high saturation" (max − min over RGB). Used by the tests, the sample-grid script and the demo.
"""

from __future__ import annotations

import numpy as np

from .data import COLORS, DIRECTIONS

__all__ = ["analyse_clip", "dominant_color", "motion_direction", "object_mask"]


def _as_fhwc(video) -> np.ndarray:
    """float ``[F, H, W, 3]`` in [0, 1] from a torch ``[F, 3, H, W]`` tensor or numpy ``[F, H, W, 3]`` array."""
    if hasattr(video, "detach"):  # torch tensor, channel-first
        video = video.detach().cpu().float().permute(0, 2, 3, 1).numpy()
    arr = np.asarray(video)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"`video` must be [F, 3, H, W] (torch) or [F, H, W, 3] (numpy), got {arr.shape}.")
    return arr


def object_mask(video, threshold: float = 0.25) -> np.ndarray:
    """Boolean ``[F, H, W]``: pixels whose saturation (max − min over RGB) exceeds ``threshold``."""
    v = _as_fhwc(video)
    return (v.max(-1) - v.min(-1)) > threshold


def dominant_color(video, mask: np.ndarray | None = None) -> str | None:
    """Name of the palette colour nearest to the mean colour of the object pixels (None if there are none)."""
    v = _as_fhwc(video)
    m = object_mask(v) if mask is None else mask
    if m.sum() < 10:
        return None
    mean = v[m].mean(0)
    names = list(COLORS)
    dist = [np.linalg.norm(mean - np.asarray(COLORS[n])) for n in names]
    return names[int(np.argmin(dist))]


def motion_direction(video, mask: np.ndarray | None = None, min_travel: float = 4.0) -> str | None:
    """Direction (left/right/up/down) of the object's centroid from the first to the last frames, or None.

    The centroid is averaged over the first and the last quarter of the frames; the larger axis of the
    displacement wins. ``None`` when the object is missing in those frames or moves less than ``min_travel`` px.
    """
    v = _as_fhwc(video)
    m = object_mask(v) if mask is None else mask
    f = m.shape[0]
    k = max(1, f // 4)

    def centroid(frames):
        pts = [np.argwhere(fr) for fr in frames if fr.sum() > 0]
        if not pts:
            return None
        c = np.concatenate([p.mean(0, keepdims=True) for p in pts]).mean(0)
        return c[1], c[0]  # (x, y)

    a, b = centroid(m[:k]), centroid(m[-k:])
    if a is None or b is None:
        return None
    dx, dy = b[0] - a[0], b[1] - a[1]
    if max(abs(dx), abs(dy)) < min_travel:
        return None
    step = (int(np.sign(dx)), 0) if abs(dx) >= abs(dy) else (0, int(np.sign(dy)))
    return next(name for name, vec in DIRECTIONS.items() if vec == step)


def analyse_clip(video) -> dict:
    """``{"color", "direction", "object_fraction"}`` of one clip."""
    m = object_mask(video)
    return {"color": dominant_color(video, m), "direction": motion_direction(video, m),
            "object_fraction": float(m.mean())}
