"""Joint ``[video, text]`` / ``[text, video]`` attention with a per-sample text padding mask, for the families'
query-sparse processors (HunyuanVideo, Mochi).

The query-sparse kernel takes no mask, so padded text keys are *dropped*, not masked: the samples of a batch are
grouped by their text mask (one group when every sample has the same valid text, the usual case), and each group
attends over its valid keys only. That is exact (a masked key has weight exactly 0 in the dense softmax) and a padded
text token can never change a video token.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # annotations only: `runtime` imports the cost model, which imports the adapters
    from ..runtime import Selection


@torch.compiler.disable
def _groups(text_mask: torch.Tensor | None, batch: int, text_len: int, device):
    """``[(sample rows [G], valid text columns [T'] or None)]``; ``None`` columns mean every text token is valid."""
    if text_mask is None:
        return [(None, None)]
    mask = text_mask.bool().reshape(batch, text_len)
    if bool(mask.all()):
        return [(None, None)]
    unique, inverse = torch.unique(mask, dim=0, return_inverse=True)
    out = []
    for g in range(unique.shape[0]):
        rows = (inverse == g).nonzero().flatten().to(device)
        cols = unique[g].nonzero().flatten().to(device)
        out.append((rows, cols))
    return out


def attend_joint(processor, sel: Selection, video_qkv, text_qkv, text_mask: torch.Tensor | None = None,
                 text_first: bool = False, zero_padded_text: bool = False):
    """Attention of (selected video + all text) queries over all video and valid text keys.

    Args:
        processor: the family's ``QuerySparseProcessorBase`` (its ``attend`` runs the kernel and records the LSE).
        sel: the block's selection; ``video_qkv[0]`` holds only its selected rows.
        video_qkv: ``(q [B, K, H, D], k [B, N, H, D], v [B, N, H, D])`` post-RoPE.
        text_qkv: ``(q, k, v)``, each ``[B, T, H, D]``.
        text_mask: ``[B, T]`` (any shape with ``B·T`` elements), true for valid text tokens; ``None``: all valid.
        text_first: joint order ``[text, video]`` (CogVideoX) instead of ``[video, text]`` (HunyuanVideo, Mochi).
        zero_padded_text: padded text *queries* get a zero output (Mochi drops them; HunyuanVideo computes them).

    Returns ``(video_out [B, K, H, D], text_out [B, T, H, D])``.
    """
    vq, vk, vv = video_qkv
    tq, tk, tv = text_qkv
    batch, text_len = tq.shape[0], tq.shape[1]
    groups = _groups(text_mask, batch, text_len, vq.device)
    if len(groups) == 1 and groups[0][0] is None:
        return _attend(processor, sel, vq, vk, vv, tq, tk, tv, text_first)
    video_out = vq.new_zeros(vq.shape)
    text_out = tq.new_zeros(tq.shape)
    lse = torch.zeros(batch, sel.num_selected, device=vq.device, dtype=torch.float32)
    for rows, cols in groups:
        sub = dataclasses.replace(sel, index=None if sel.index is None else sel.index[rows],
                                  text_len=int(cols.numel()), lse=None)
        q_text = tq[rows][:, cols] if zero_padded_text else tq[rows]
        v_out, t_out = _attend(processor, sub, vq[rows], vk[rows], vv[rows], q_text, tk[rows][:, cols],
                               tv[rows][:, cols], text_first)
        video_out[rows] = v_out
        if zero_padded_text:
            text_out[rows.unsqueeze(1), cols.unsqueeze(0)] = t_out
        else:
            text_out[rows] = t_out
        lse[rows] = sub.lse
    sel.lse = lse
    return video_out, text_out


def _attend(processor, sel, vq, vk, vv, tq, tk, tv, text_first):
    n_sel, n_text = vq.shape[1], tq.shape[1]
    if text_first:
        out = processor.attend(sel, torch.cat([tq, vq], 1), torch.cat([tk, vk], 1), torch.cat([tv, vv], 1),
                               video_offset=n_text)
        return out[:, n_text:], out[:, :n_text]
    out = processor.attend(sel, torch.cat([vq, tq], 1), torch.cat([vk, tk], 1), torch.cat([vv, tv], 1))
    return out[:, :n_sel], out[:, n_sel:]
