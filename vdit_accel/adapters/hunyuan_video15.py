"""HunyuanVideo 1.5 (``HunyuanVideo15Transformer3DModel``, ``HunyuanVideo15Pipeline`` / ``ImageToVideoPipeline``).

Dual-stream blocks only (``HunyuanVideo15TransformerBlock``: ``attn`` joint ``[video, text]`` attention with
``add_q/k/v_proj`` for the text, video ``ff``, text ``ff_context``), the same projections, norms and RoPE as
HunyuanVideo's dual-stream blocks. The text is ``[valid image, valid ByT5, valid Qwen tokens, padding]`` per sample
with a ``[B, N_text]`` mask; 1.5's own processor turns it into a symmetric ``[video + text]²`` mask, so a padded text
query attends to nothing and gets a zero output (``zero_padded_text``), and padded text keys are dropped for every
query, as in HunyuanVideo.
"""

from __future__ import annotations

import dataclasses

from diffusers import HunyuanVideo15Transformer3DModel
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15TransformerBlock

from .hunyuan_video import ADAPTER as HUNYUAN_VIDEO
from .hunyuan_video import HunyuanVideoQuerySparseAttnProcessor


class HunyuanVideo15QuerySparseAttnProcessor(HunyuanVideoQuerySparseAttnProcessor):
    """HunyuanVideo's query-sparse joint attention with 1.5's text-only ``[B, N_text]`` mask."""

    zero_padded_text = True

    def applies(self, attn, encoder_hidden_states, attention_mask):
        return encoder_hidden_states is not None and attention_mask is not None

    def text_mask(self, attention_mask, text_qkv):
        batch, n_text = text_qkv[0].shape[:2]
        if tuple(attention_mask.shape) != (batch, n_text):
            raise ValueError(
                "vdit-accel's HunyuanVideo 1.5 processor expects the transformer's text mask [B, N_text]; got "
                f"{tuple(attention_mask.shape)}. Call `pipe.disable_acceleration()` for custom masks."
            )
        return attention_mask.bool()


try:  # diffusers registers no block metadata for HunyuanVideo 1.5
    TransformerBlockRegistry.get(HunyuanVideo15TransformerBlock)
except ValueError:
    TransformerBlockRegistry.register(HunyuanVideo15TransformerBlock, TransformerBlockMetadata(
        return_hidden_states_index=0, return_encoder_hidden_states_index=1))

ADAPTER = dataclasses.replace(
    HUNYUAN_VIDEO,
    name="hunyuan_video15",
    transformer_cls=HunyuanVideo15Transformer3DModel,
    block_lists=("transformer_blocks",),
    token_wise={"ff": "video"},
    token_wise_by_list={},
    token_counters={},
    make_processor=HunyuanVideo15QuerySparseAttnProcessor,
    notes="joint [video, text] attention in dual-stream blocks: text always computed (padded text queries zero, "
          "padded keys dropped); video FFN on selected tokens; token refiner untouched",
    # HunyuanVideo's plan names the RoPE outputs and blocks of another layout: no context-parallel plan
    cp_plan=None,
    cp_text=None,
)
