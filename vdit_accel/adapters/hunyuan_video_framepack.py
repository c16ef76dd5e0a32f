"""HunyuanVideo Framepack (``HunyuanVideoFramepackTransformer3DModel``, ``HunyuanVideoFramepackPipeline``).

HunyuanVideo's dual- and single-stream blocks (the same classes, so the same query-sparse processor and per-token
submodules), with the clean history prepended to the video tokens: ``[4x history, 2x history, clean latents,
current window]``, each with its own RoPE rows (packed by the transformer before the first block). Every one of
those tokens is a video token for token selection: the history tokens are keys of every current token, and their
block outputs change with the current window, so they are selected and cached like the others.

The packed sequence has no single ``(F', H', W')`` grid (the 2x/4x history is downsampled), so the grid is the line
``(1, 1, N)`` and score reuse sees one channel group (``rope_groups_fn`` ``None``). The image tokens
(``image_projection``) are prepended to the text and always computed, like the text.
"""

from __future__ import annotations

import dataclasses
from math import ceil

from diffusers import HunyuanVideoFramepackTransformer3DModel

from .base import bound_arg
from .hunyuan_video import ADAPTER as HUNYUAN_VIDEO


def _framepack_tokens(transformer, args, kwargs) -> int:
    """Video tokens the blocks see: the current window plus the history the transformer packs in front of it."""
    _, _, f, h, w = bound_arg("hidden_states", 0, args, kwargs).shape
    p, p_t = transformer.config.patch_size, transformer.config.patch_size_t
    n = (f // p_t) * (h // p) * (w // p)

    def given(name):
        latents, indices = kwargs.get(name), kwargs.get(f"indices_{name}")
        return latents if latents is not None and indices is not None else None

    # clean latents: Conv3d (1, 2, 2); 2x / 4x history: padded to multiples of (2, 4, 4) / (4, 8, 8) first
    for name, (kt, kh, kw) in (("latents_clean", (1, 2, 2)), ("latents_history_2x", (2, 4, 4)),
                               ("latents_history_4x", (4, 8, 8))):
        latents = given(name)
        if latents is not None:
            _, _, lf, lh, lw = latents.shape
            n += ceil(lf / kt) * ceil(lh / kh) * ceil(lw / kw)
    return n


def _framepack_grid(transformer, args, kwargs):
    return 1, 1, _framepack_tokens(transformer, args, kwargs)


ADAPTER = dataclasses.replace(
    HUNYUAN_VIDEO,
    name="hunyuan_video_framepack",
    transformer_cls=HunyuanVideoFramepackTransformer3DModel,
    grid_fn=_framepack_grid,
    rope_groups_fn=lambda transformer: None,
    notes="as HunyuanVideo; the packed clean/2x/4x history tokens are video tokens (selected and cached); image "
          "tokens computed like the text",
    # HunyuanVideo's context-parallel plan splits the RoPE module's output, which Framepack calls once per history
    # level: it does not apply, and there is no other plan
    cp_plan=None,
    cp_text=None,
)
