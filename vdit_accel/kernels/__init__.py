"""Attention entry points used by the acceleration methods.

Dispatch (see :func:`query_sparse_attention`): the Triton kernel on CUDA, the fused PyTorch CPU kernel on CPU,
the naive reference as the oracle. The methods call these entry points, never their own attention.
"""

from __future__ import annotations

import torch

from .query_sparse import gather_rows, naive_query_sparse_attention, sdpa_query_sparse_attention


def query_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_index: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention for selected query rows over all keys; returns ``(out [B,K,H,D], lse [B,K,H] fp32)``.

    Layout is diffusers' dispatch layout ``[B, S, H, D]``. ``q_index`` ``[B, K]`` selects rows of ``q``; ``None``
    means ``q`` already holds only the selected rows.
    """
    if q.device.type == "cpu":
        return sdpa_query_sparse_attention(q, k, v, q_index, scale)
    return naive_query_sparse_attention(q, k, v, q_index, scale)


__all__ = ["gather_rows", "query_sparse_attention", "naive_query_sparse_attention", "sdpa_query_sparse_attention"]
