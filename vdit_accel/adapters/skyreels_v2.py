"""SkyReels-V2 (``SkyReelsV2Transformer3DModel``): ``SkyReelsV2Pipeline`` / ``ImageToVideo`` and the
diffusion-forcing pipelines (``SkyReelsV2DiffusionForcing*``).

Wan 2.1's layout and RoPE with SkyReels' own block/attention classes. Two differences from Wan:

- diffusion forcing passes a per-frame timestep ``[B, F']``, turned into per-token modulation (element-wise, all rows;
  the step resolver takes the maximum timestep);
- with ``causal_block_size > 1`` (``num_frame_per_block``) ``attn1`` gets a bool block-causal mask ``[1, 1, N, N]``.
  The query-sparse kernel takes no mask, so masked calls take an exact naive path: the mask rows of the selected
  queries, ``softmax`` over the allowed keys, and the LSE from the same scores (memory ``B·H·K·N``, as diffusers' own
  masked attention). Score reuse and context parallelism do not run on that path (a clear error).
"""

from __future__ import annotations

import torch
from diffusers import SkyReelsV2Transformer3DModel
from diffusers.models.transformers.transformer_skyreels_v2 import SkyReelsV2TransformerBlock

from ..kernels import query_sparse_attention
from .wan import WanQuerySparseAttnProcessor
from .wan_like import wan_like_adapter


class SkyReelsV2QuerySparseAttnProcessor(WanQuerySparseAttnProcessor):
    """Wan's query-sparse ``attn1`` plus the exact masked path of diffusion forcing's block-causal attention."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        sel = self.runtime.selection
        if sel is None or encoder_hidden_states is not None or attention_mask is None:
            return self.run(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        rt = self.runtime
        if rt.qk_transforms or rt.attention_fn is not query_sparse_attention:
            raise RuntimeError("SkyReels-V2 with a causal block size (num_frame_per_block > 1) runs token selection "
                               "only: disable score reuse and context parallelism, or use causal_block_size=1.")
        batch, seq_len, _ = hidden_states.shape
        query, key, value = self.rope(attn, sel, self.project(attn, sel, hidden_states, None)[0], rotary_emb)
        mask = attention_mask.reshape(-1, seq_len, seq_len).expand(batch, -1, -1)  # [B, N, N] bool
        if sel.index is not None:
            mask = mask.gather(1, sel.index.unsqueeze(-1).expand(-1, -1, seq_len))
        scores = torch.einsum("bqhd,bkhd->bhqk", query.float(), key.float()) * query.shape[-1] ** -0.5
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        lse = scores.logsumexp(dim=-1)  # [B, H, K]
        out = torch.einsum("bhqk,bkhd->bqhd", (scores - lse.unsqueeze(-1)).exp(), value.float())
        sel.lse = lse.mean(dim=1)
        rt.count("attention_queries", sel.lse.numel())
        rt.count("attention_keys", sel.num_video * batch)
        video_out, _ = self.output(attn, out, None, query.dtype)
        return sel.scatter(video_out, seq_len)


ADAPTER = wan_like_adapter(
    "skyreels_v2", SkyReelsV2Transformer3DModel, SkyReelsV2TransformerBlock,
    processor=SkyReelsV2QuerySparseAttnProcessor,
    notes="as Wan; diffusion forcing's block-causal attention through an exact masked path",
)
