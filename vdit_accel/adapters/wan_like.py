"""Families whose blocks are copies of Wan's (``WanTransformerBlock`` layout, ``WanAttention`` with
``WanAttnProcessor``'s call signature and Wan's interleaved 3-D RoPE): they reuse Wan's query-sparse processor.

diffusers registers only ``WanTransformerBlock`` in its ``TransformerBlockRegistry``; the copies (ChronoEdit's,
Wan Animate's, SkyReels-V2's block) are registered here with the same metadata, since the block hooks read the
hidden-states argument and output index from that registry.
"""

from __future__ import annotations

from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

from .base import ModelAdapter
from .wan import WanQuerySparseAttnProcessor, wan_grid, wan_rope_groups, wan_size_rules


def register_wan_like_block(block_cls: type) -> None:
    """Register ``block_cls`` (``forward(hidden_states, encoder_hidden_states, temb, rotary_emb, ...) -> tensor``)
    with diffusers' block registry, unless diffusers already does."""
    try:
        TransformerBlockRegistry.get(block_cls)  # diffusers' own registration wins
    except ValueError:
        TransformerBlockRegistry.register(block_cls, TransformerBlockMetadata(return_hidden_states_index=0))


def wan_like_adapter(name: str, transformer_cls: type, block_cls: type, notes: str, processor=None,
                     rope_groups_fn=wan_rope_groups) -> ModelAdapter:
    """A :class:`ModelAdapter` for a family with Wan's block layout (``blocks``: ``attn1`` video self-attention,
    ``attn2`` cross-attention, ``ffn``; separate ``cond``/``uncond`` calls; ``[B, C, F, H, W]`` input)."""
    register_wan_like_block(block_cls)
    return ModelAdapter(
        name=name,
        transformer_cls=transformer_cls,
        block_lists=("blocks",),
        self_attention="attn1",
        token_wise={"attn2": "video", "ffn": "video"},
        make_processor=processor or WanQuerySparseAttnProcessor,
        grid_fn=wan_grid,
        rope_groups_fn=rope_groups_fn,
        cfg_batched=False,
        notes=notes,
        size_rules=wan_size_rules,  # the same RoPE table (rope_max_seq_len) and VAE
    )
