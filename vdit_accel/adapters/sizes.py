"""The sizes (height, width, frame count) a pipeline can generate, as declared by its family's adapter.

Each adapter's ``size_rules(pipe)`` builds a :class:`SizeRules` from the pipeline's VAE, the transformer's patch size
and the model's own limits (a RoPE table of ``rope_max_seq_len`` positions per axis, a learned positional embedding
of fixed size). :meth:`SizeRules.check` turns a size the model cannot run into a ``ValueError`` naming the field,
the rule and the nearest valid values, before any work starts (diffusers would otherwise fail deep inside the model,
e.g. ``shape '[1, 1, 104, -1]' is invalid``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SizeRules:
    """What ``height``, ``width`` and ``num_frames`` a pipeline accepts.

    Args:
        spatial: height and width must be multiples of it (the VAE's spatial factor × the transformer's patch size,
            or a larger multiple the pipeline demands).
        temporal: ``num_frames - 1`` must be a multiple of it (the VAE's temporal compression; 1: any count).
        vae_spatial: the VAE's spatial factor alone (pixels per latent position).
        patch_hw: the transformer's spatial patch size (a token covers ``vae_spatial · patch_hw`` pixels a side).
        patch_t: latent frames per token (the transformer's temporal patch size; a partial patch is padded).
        min_height, min_width, min_frames: the smallest valid values (default: one patch, one frame).
        max_height, max_width, max_frames: the largest valid values the model can take, or ``None`` (no limit in the
            model itself; memory is the user's to judge).
        limit: why the maxima / minima exist, quoted in the error (e.g. the RoPE table length).
        spatial_note: why ``spatial`` is what it is, quoted in the error (default: the VAE factor × patch size).
    """

    spatial: int
    temporal: int = 1
    vae_spatial: int = 8
    patch_hw: int = 1
    patch_t: int = 1
    min_height: int | None = None
    min_width: int | None = None
    min_frames: int = 1
    max_height: int | None = None
    max_width: int | None = None
    max_frames: int | None = None
    limit: str = ""
    spatial_note: str = ""

    def __post_init__(self):
        object.__setattr__(self, "min_height", self.min_height or self.spatial)
        object.__setattr__(self, "min_width", self.min_width or self.spatial)

    def bounds(self, name: str) -> tuple[int, int | None]:
        """``(smallest, largest or None)`` valid value of ``"height"``, ``"width"`` or ``"num_frames"``."""
        if name == "num_frames":
            return self.min_frames, self.max_frames
        if name in ("height", "width"):
            return getattr(self, f"min_{name}"), getattr(self, f"max_{name}")
        raise ValueError(f"unknown size field {name!r}; expected 'height', 'width' or 'num_frames'.")

    def step(self, name: str) -> int:
        return self.temporal if name == "num_frames" else self.spatial

    def valid(self, name: str, value: int) -> bool:
        lo, hi = self.bounds(name)
        offset = 1 if name == "num_frames" else 0
        return lo <= value and (hi is None or value <= hi) and (value - offset) % self.step(name) == 0

    def nearest(self, name: str, value: int) -> list[int]:
        """The valid values nearest to ``value`` (one or two, ascending)."""
        lo, hi = self.bounds(name)
        step, offset = self.step(name), (1 if name == "num_frames" else 0)
        down = (value - offset) // step * step + offset
        candidates = {down, down + step} if down != value else {value}
        clamp_lo = lo + (-(lo - offset)) % step  # smallest valid value >= lo
        out = set()
        for c in candidates:
            c = max(c, clamp_lo)
            if hi is not None and c > hi:
                c = hi - (hi - offset) % step
            out.add(c)
        return sorted(out)

    def problem(self, name: str, value) -> str | None:
        """Why ``value`` is not a valid ``name``, or ``None`` when it is."""
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{name} must be a whole number, got {value!r}."
        if self.valid(name, value):
            return None
        lo, hi = self.bounds(name)
        step = self.step(name)
        nearest = " or ".join(str(v) for v in self.nearest(name, value))
        why = f" ({self.limit})" if self.limit else ""
        if value < lo:
            one_step = 1 if name == "num_frames" else self.spatial
            why_low = why if lo > one_step else f" (one {'frame' if name == 'num_frames' else 'patch'})"
            return f"{name}={value} is below this model's minimum {lo}{why_low}; nearest valid: {nearest}."
        if hi is not None and value > hi:
            return f"{name}={value} is above this model's limit {hi}{why}; nearest valid: {nearest}."
        if name == "num_frames":
            return (f"num_frames={value}: num_frames - 1 must be a multiple of {step} (the VAE compresses {step} "
                    f"frames into one latent frame after the first); nearest valid: {nearest}.")
        note = self.spatial_note or f"VAE ×{self.vae_spatial} × patch {self.patch_hw}"
        return f"{name}={value} is not a multiple of {step} ({note}); nearest valid: {nearest}."

    def check(self, height: int, width: int, num_frames: int) -> None:
        """Raise a ``ValueError`` naming the first invalid field, the rule and the nearest valid values."""
        for name, value in (("height", height), ("width", width), ("num_frames", num_frames)):
            message = self.problem(name, value)
            if message is not None:
                raise ValueError(message)

    def latent_grid(self, height: int, width: int, num_frames: int) -> tuple[int, int, int]:
        """The post-patch token grid ``(F', H', W')`` of a valid size."""
        latent_frames = (num_frames - 1) // self.temporal + 1
        token = self.vae_spatial * self.patch_hw
        return -(-latent_frames // self.patch_t), height // token, width // token

    def num_tokens(self, height: int, width: int, num_frames: int) -> int:
        f, h, w = self.latent_grid(height, width, num_frames)
        return f * h * w


def video_size_rules(vae: int, patch_hw: int, temporal: int = 1, patch_t: int = 1, pipeline_multiple: int = 1,
                     pipeline: str = "the pipeline", **limits) -> SizeRules:
    """Rules for VAE ×``vae`` × patch ``patch_hw`` tokens; ``pipeline_multiple`` is what the pipeline's own
    ``check_inputs`` demands of height and width (Wan and HunyuanVideo: 16, LTX: 32), so the multiple is the least
    common multiple of the two. ``limits``: the model's ``min_*`` / ``max_*`` / ``limit`` fields."""
    token = vae * patch_hw
    spatial = math.lcm(token, pipeline_multiple)
    note = f"VAE ×{vae} × patch {patch_hw}"
    if spatial != token:
        note += f", and {pipeline} needs multiples of {pipeline_multiple}"
    return SizeRules(spatial=spatial, temporal=temporal, vae_spatial=vae, patch_hw=patch_hw, patch_t=patch_t,
                     spatial_note=note, **limits)


def pipe_factor(pipe, names: tuple[str, ...], default: int) -> int:
    """The first of the pipeline attributes ``names`` that is set (the VAE factors are named differently per
    pipeline), else ``default``."""
    for name in names:
        value = getattr(pipe, name, None)
        if value:
            return int(value)
    return default


def size_rules_from_pipe(pipe) -> SizeRules:
    """Rules from the usual pipeline attributes alone (VAE factors × patch size) with no model limits: the default
    of an adapter that declares no ``size_rules`` of its own."""
    cfg = pipe.transformer.config
    vae = pipe_factor(pipe, ("vae_scale_factor_spatial", "vae_spatial_compression_ratio", "vae_spatial_scale_factor",
                             "vae_scale_factor"), 8)
    temporal = pipe_factor(pipe, ("vae_scale_factor_temporal", "vae_temporal_compression_ratio",
                                  "vae_temporal_scale_factor"), 1)
    patch = cfg.patch_size
    if isinstance(patch, (tuple, list)):
        patch_t, patch_hw = int(patch[0]), max(int(patch[-2]), int(patch[-1]))
    else:
        patch_t, patch_hw = int(getattr(cfg, "patch_size_t", None) or 1), int(patch)
    return video_size_rules(vae, patch_hw, temporal, patch_t)
