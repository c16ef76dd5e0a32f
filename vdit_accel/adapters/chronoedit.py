"""ChronoEdit (``ChronoEditTransformer3DModel``, ``ChronoEditPipeline``): a Wan 2.1 image-to-video model for image
editing, with its own copies of Wan's block, attention and processor (identical code) and a RoPE that can skip
frames (``temporal_skip_len``) when only the input and the edited frame are denoised.

RoPE channel groups per head are ChronoEdit's own split: ``hd - 2·(hd//3)`` / ``hd//3`` / ``hd//3``.
"""

from __future__ import annotations

from diffusers import ChronoEditTransformer3DModel
from diffusers.models.transformers.transformer_chronoedit import WanTransformerBlock as ChronoEditBlock

from .wan_like import wan_like_adapter


def _chronoedit_rope_groups(transformer):
    hd = transformer.config.attention_head_dim
    return hd - 2 * (hd // 3), hd // 3, hd // 3


ADAPTER = wan_like_adapter(
    "chronoedit", ChronoEditTransformer3DModel, ChronoEditBlock, rope_groups_fn=_chronoedit_rope_groups,
    notes="as Wan image-to-video (image tokens in attn2)",
)
