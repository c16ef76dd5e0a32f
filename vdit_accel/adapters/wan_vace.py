"""Wan VACE (``WanVACETransformer3DModel``, ``WanVACEPipeline``): Wan's main ``blocks`` plus a control branch.

The main ``blocks`` are diffusers' ``WanTransformerBlock`` and get token selection exactly like Wan. The control
branch (``vace_blocks``: ``WanVACETransformerBlock``, run first on the control latents, one hint per
``vace_layers`` entry) runs dense: its hints are added to the main stream *after* a block, outside the block hook, so
every token receives its fresh hint at every step, cached or not.
"""

from __future__ import annotations

from diffusers import WanVACETransformer3DModel
from diffusers.models.transformers.transformer_wan import WanTransformerBlock

from .wan_like import wan_like_adapter

ADAPTER = wan_like_adapter(
    "wan_vace", WanVACETransformer3DModel, WanTransformerBlock,
    notes="as Wan on the main blocks; the VACE control blocks (vace_blocks) run dense",
)
