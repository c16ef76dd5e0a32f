"""Wan 2.2 Animate (``WanAnimateTransformer3DModel``, ``WanAnimatePipeline``): Wan 2.1 image-to-video blocks (a copy
of ``WanTransformerBlock``) plus a pose patch embedding added to the video tokens and a face adapter.

The face adapter (``face_adapter``, cross-attention from the video tokens to the face-motion features) runs after
every ``inject_face_latents_blocks``-th block, outside the block, and stays dense: every token gets its fresh face
residual at every step, cached or not. The video tokens are ``[reference frame, segment frames]`` (``T + 1`` latent
frames in raster order), so the grid is the input's, as for Wan. Each inference segment is a new denoising run
(the scheduler restarts), which resets the block caches.
"""

from __future__ import annotations

from diffusers import WanAnimateTransformer3DModel
from diffusers.models.transformers.transformer_wan_animate import WanTransformerBlock as WanAnimateBlock

from .wan_like import wan_like_adapter

ADAPTER = wan_like_adapter(
    "wan_animate", WanAnimateTransformer3DModel, WanAnimateBlock,
    notes="as Wan image-to-video; the pose embedding, motion/face encoders and face adapter run dense",
)
