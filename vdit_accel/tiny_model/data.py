"""Procedural training clips for the bundled tiny text-to-video model: one coloured shape moving over a background.

Every clip is fully described by a :class:`ClipSpec` (colour, shape, direction, background, size, path), drawn from a
seeded ``numpy.random.Generator``, so a dataset is reproducible from one integer. Captions name exactly the three
things the model must follow (colour, shape, motion) plus the background:

    "a red circle moving left on a black background"

Shapes are rendered with a one-pixel anti-aliased edge from a signed distance, so they stay crisp at 64×64 and the
VAE sees no aliasing flicker. Only numpy is needed here (no torch), so the tests and the demo can use it cheaply.

>>> import numpy as np
>>> from vdit_accel.tiny_model.data import sample_spec, render_clip
>>> spec = sample_spec(np.random.default_rng(0))
>>> video, mask = render_clip(spec)
>>> video.shape, video.dtype, mask.shape
((17, 64, 64, 3), dtype('float32'), (17, 64, 64))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "DIRECTIONS",
    "SHAPES",
    "ClipSpec",
    "caption_for",
    "make_dataset",
    "parse_caption",
    "render_clip",
    "sample_spec",
]

# RGB in [0, 1]. Saturated, well-separated hues, so "the dominant colour of the object" is unambiguous.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.12, 0.10),
    "green": (0.12, 0.80, 0.15),
    "blue": (0.15, 0.30, 0.98),
    "yellow": (0.96, 0.88, 0.10),
    "purple": (0.65, 0.18, 0.88),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
# Unit motion vectors in image coordinates (x right, y down).
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# Backgrounds are achromatic so they never compete with the object's colour.
BACKGROUNDS: tuple[str, ...] = ("black", "gray", "checkered", "striped")


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip. Positions are pixel centres of the shape at the first/last frame."""

    color: str
    shape: str
    direction: str
    background: str
    radius: float
    start: tuple[float, float]
    end: tuple[float, float]
    num_frames: int = 17
    height: int = 64
    width: int = 64

    @property
    def caption(self) -> str:
        return caption_for(self.color, self.shape, self.direction, self.background)


def caption_for(color: str, shape: str, direction: str, background: str) -> str:
    """The caption template the model was trained on."""
    return f"a {color} {shape} moving {direction} on a {background} background"


def parse_caption(caption: str) -> dict[str, str | None]:
    """Find the colour, shape, direction and background words of a caption (None where absent)."""
    words = caption.lower().replace(",", " ").split()
    pick = lambda options: next((w for w in words if w in options), None)  # noqa: E731
    return {
        "color": pick(COLORS),
        "shape": pick(SHAPES),
        "direction": pick(DIRECTIONS),
        "background": pick(BACKGROUNDS),
    }


def sample_spec(
    rng: np.random.Generator,
    num_frames: int = 17,
    height: int = 64,
    width: int = 64,
    *,
    color: str | None = None,
    shape: str | None = None,
    direction: str | None = None,
    background: str | None = None,
) -> ClipSpec:
    """Draw a random clip; any of colour/shape/direction/background can be fixed by keyword."""
    color = color or str(rng.choice(list(COLORS)))
    shape = shape or str(rng.choice(SHAPES))
    direction = direction or str(rng.choice(list(DIRECTIONS)))
    background = background or str(rng.choice(BACKGROUNDS))
    for name, value, options in (
        ("color", color, COLORS),
        ("shape", shape, SHAPES),
        ("direction", direction, DIRECTIONS),
        ("background", background, BACKGROUNDS),
    ):
        if value not in options:
            raise ValueError(f"`{name}` must be one of {sorted(options)}, got {value!r}.")

    scale = min(height, width) / 64.0
    radius = float(rng.uniform(7.0, 10.0)) * scale
    travel = float(rng.uniform(0.40, 0.52)) * (width if DIRECTIONS[direction][0] else height)
    dx, dy = DIRECTIONS[direction]
    margin = radius + 2.0
    # Start/end so that the whole path stays inside the frame.
    pos = []
    for d, size in ((dx, width), (dy, height)):
        if d == 0:
            c = float(rng.uniform(margin, size - margin))
            pos.append((c, c))
        else:
            lo, hi = margin, size - margin - travel
            s = float(rng.uniform(lo, max(lo, hi)))
            a, b = (s, s + travel) if d > 0 else (s + travel, s)
            pos.append((a, b))
    start = (pos[0][0], pos[1][0])
    end = (pos[0][1], pos[1][1])
    return ClipSpec(color, shape, direction, background, radius, start, end, num_frames, height, width)


def _background(name: str, height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    if name == "black":
        g = np.full((height, width), 0.06, np.float32)
    elif name == "gray":
        g = np.full((height, width), 0.45, np.float32)
    elif name == "checkered":
        cell = max(2, height // 8)
        g = np.where(((yy // cell) + (xx // cell)) % 2 == 0, 0.22, 0.38).astype(np.float32)
    elif name == "striped":
        period = max(4, height // 8)
        g = np.where(((xx + yy) // (period // 2)) % 2 == 0, 0.18, 0.32).astype(np.float32)
    else:
        raise ValueError(f"`background` must be one of {list(BACKGROUNDS)}, got {name!r}.")
    return np.repeat(g[..., None], 3, axis=-1)


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * r
    if shape == "diamond":
        return (np.abs(dx) + np.abs(dy)) / np.sqrt(2.0) - 0.78 * r
    if shape == "triangle":
        # Upward-pointing equilateral triangle: max over the three edges' outward normals (image y points down).
        ri = 0.58 * r
        d = dy * 1.0 - ri
        for ang in (np.deg2rad(210.0), np.deg2rad(330.0)):
            d = np.maximum(d, dx * np.cos(ang) + dy * np.sin(ang) - ri)
        return d + 0.12 * r  # shift down a little so the centroid sits near the path
    raise ValueError(f"`shape` must be one of {list(SHAPES)}, got {shape!r}.")


def render_clip(spec: ClipSpec) -> tuple[np.ndarray, np.ndarray]:
    """Render a clip.

    Returns:
        ``(video, mask)``: video float32 ``[F, H, W, 3]`` in [0, 1]; mask float32 ``[F, H, W]`` in [0, 1], the
        object's anti-aliased coverage per frame.
    """
    f, h, w = spec.num_frames, spec.height, spec.width
    bg = _background(spec.background, h, w)
    col = np.asarray(COLORS[spec.color], np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx += 0.5
    yy += 0.5
    video = np.empty((f, h, w, 3), np.float32)
    mask = np.empty((f, h, w), np.float32)
    for i in range(f):
        t = i / max(1, f - 1)
        cx = spec.start[0] + t * (spec.end[0] - spec.start[0])
        cy = spec.start[1] + t * (spec.end[1] - spec.start[1])
        cov = np.clip(0.5 - _signed_distance(spec.shape, xx - cx, yy - cy, spec.radius), 0.0, 1.0)
        mask[i] = cov
        video[i] = bg * (1.0 - cov[..., None]) + col * cov[..., None]
    return video, mask


def make_dataset(
    num_clips: int, seed: int, num_frames: int = 17, height: int = 64, width: int = 64
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``num_clips`` clips from one seed: videos uint8 ``[N, F, H, W, 3]``, captions, masks uint8 ``[N, F, H, W]``."""
    rng = np.random.default_rng(seed)
    videos = np.empty((num_clips, num_frames, height, width, 3), np.uint8)
    masks = np.empty((num_clips, num_frames, height, width), np.uint8)
    captions = []
    for n in range(num_clips):
        spec = sample_spec(rng, num_frames, height, width)
        v, m = render_clip(spec)
        videos[n] = np.round(v * 255.0).astype(np.uint8)
        masks[n] = np.round(m * 255.0).astype(np.uint8)
        captions.append(spec.caption)
    return videos, captions, masks
