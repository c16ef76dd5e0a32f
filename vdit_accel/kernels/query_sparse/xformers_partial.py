"""Query-sparse attention on xformers' ``memory_efficient_attention_partial``, which returns the LSE.

Used on CUDA when triton cannot run and xformers is installed. xformers has no in-kernel row gather, so the
selected query rows are gathered first (one ``[B, K, H, D]`` copy).
"""

from __future__ import annotations

import torch

from .naive import gather_rows


def xformers_query_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_index: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`~vdit_accel.kernels.query_sparse.naive_query_sparse_attention`."""
    from xformers.ops import fmha

    if q_index is not None:
        q = gather_rows(q, q_index)
    n_rows = q.shape[1]
    # Layout [B, M, H, K] in and out. The LSE comes back as [B, H, M'] fp32, where some operators pad M' to a
    # multiple of 32; keep the real rows. output_dtype: the partial path otherwise returns fp32.
    out, lse = fmha.memory_efficient_attention_partial(q, k, v, scale=scale, output_dtype=q.dtype)
    return out, lse[..., :n_rows].transpose(1, 2).float().contiguous()
