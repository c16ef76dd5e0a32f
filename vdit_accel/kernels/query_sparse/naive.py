"""Pure-PyTorch reference for query-sparse attention: the CPU path and the test oracle.

Query-sparse attention computes exact softmax attention for a *subset* of query rows against *all* keys and
values, and returns each computed row's log-sum-exp (LSE). Every computed row is therefore identical to the same
row of dense attention, LSE included.
"""

from __future__ import annotations

import torch


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather rows along dim 1. ``x``: ``[B, S, ...]``, ``index``: ``[B, K]`` (long) -> ``[B, K, ...]``."""
    view = index.view(*index.shape, *([1] * (x.dim() - 2)))
    return torch.gather(x, 1, view.expand(-1, -1, *x.shape[2:]))


def naive_query_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_index: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of selected query rows over all keys, with the LSE of each row.

    Args:
        q: queries ``[B, Sq, H, D]`` (diffusers' dispatch layout).
        k, v: keys and values ``[B, Skv, H, D]``.
        q_index: ``[B, K]`` indices of the query rows to compute, or ``None`` for all rows of ``q`` (``q`` is then
            taken as already gathered).
        scale: softmax scale, default ``1/sqrt(D)``.

    Returns:
        ``out`` ``[B, K, H, D]`` in ``q.dtype`` and ``lse`` ``[B, K, H]`` in float32 (natural log of the row's
        sum of ``exp(scale * q·k)``).
    """
    if q_index is not None:
        q = gather_rows(q, q_index)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qh, kh, vh = (t.transpose(1, 2).float() for t in (q, k, v))  # [B, H, S, D]
    logits = torch.matmul(qh, kh.transpose(-1, -2)) * scale
    lse = torch.logsumexp(logits, dim=-1)  # [B, H, K]
    out = torch.matmul(torch.exp(logits - lse.unsqueeze(-1)), vh)
    return out.transpose(1, 2).to(q.dtype), lse.transpose(1, 2).contiguous()


def sdpa_query_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_index: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`naive_query_sparse_attention`, on PyTorch's fused attention kernels (gathers first).

    CPU: ``aten._scaled_dot_product_flash_attention_for_cpu`` is tiled (no ``[K, Skv]`` score matrix is
    materialised) and returns the LSE, so this is the fast CPU path; the naive version above is its oracle.
    CUDA (the fallback when neither triton nor xformers can run): FlashAttention-2 through
    ``aten._scaled_dot_product_flash_attention`` for fp16/bf16, the memory-efficient kernel for other dtypes; both
    return the LSE.
    """
    if q_index is not None:
        q = gather_rows(q, q_index)
    n_rows = q.shape[1]
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    if q.device.type == "cuda":
        if q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256:
            res = torch.ops.aten._scaled_dot_product_flash_attention(qh, kh, vh, 0.0, False, False, scale=scale)
            out, lse = res[0], res[1]
        else:
            out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(qh, kh, vh, None, True, scale=scale)[:2]
    else:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qh, kh, vh, 0.0, False, scale=scale)
    # Some kernels pad the LSE's query axis (to a multiple of 32); keep the real rows.
    return out.transpose(1, 2), lse[..., :n_rows].transpose(1, 2).float().contiguous()


def scatter_rows_(dst: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """In place ``dst[b, index[b, j]] = rows[b, j]`` along dim 1; ``dst`` ``[B, S, ...]``, ``rows`` ``[B, K, ...]``."""
    view = index.view(*index.shape, *([1] * (dst.dim() - 2)))
    return dst.scatter_(1, view.expand(-1, -1, *dst.shape[2:]), rows.to(dst.dtype))
