"""Attention entry points used by the acceleration methods: the methods call these, never their own attention.

* :func:`query_sparse_attention`: exact attention for selected query rows over all keys, with each row's LSE
  (Astraea's token selection).
* :func:`channel_reuse_attention`: attention whose follower tiles reuse their anchor's partial scores in channel
  blocks that barely changed (TimeRipple's kernel path); plan it with :func:`channel_reuse_plan`.

Backends (``backend=None`` picks automatically and logs, once, why a faster one was skipped):

==========  ============================================================================================
``triton``  the Triton kernels in ``*/triton.py``: CUDA; CPU tensors only under ``TRITON_INTERPRET=1`` (tests)
``xformers``  query-sparse only: ``xformers.ops.fmha.memory_efficient_attention_partial`` (CUDA, fp16/bf16)
``sdpa``    PyTorch's fused attention with LSE on the (gathered / reuse-substituted) queries: CPU and CUDA
``naive``   the readable references in ``*/naive.py`` (materialise the score matrix; the test oracle)
==========  ============================================================================================

Automatic order: CUDA fp16/bf16 → triton, xformers, sdpa; CUDA fp32 → sdpa; CPU → sdpa. Importing this package
imports neither triton nor xformers; the kernel modules load on first use.
"""

from __future__ import annotations

import torch

from .channel_reuse import (
    ChannelReusePlan,
    apply_reuse,
    channel_reuse_plan,
    check_plan_for_triton,
    naive_channel_reuse_attention,
    sdpa_channel_reuse_attention,
)
from .diffusers_backends import diffusers_query_sparse_attention, log_fallback, lse_supported, own_backend
from .dispatch import BackendUnavailableError, check_always, check_triton, check_xformers, resolve
from .query_sparse import gather_rows, naive_query_sparse_attention, scatter_rows_, sdpa_query_sparse_attention

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check_sdpa(q: torch.Tensor, *_: object) -> tuple[bool, str]:
    if q.device.type in ("cpu", "cuda"):
        return True, ""
    return False, f"needs a CPU or CUDA device; got {q.device.type}"


def _forward_only(*tensors: object) -> tuple[bool, str]:
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors):
        return False, ("is forward-only and the inputs require grad (run under torch.no_grad()/inference_mode(), "
                       "or use backend='sdpa')")
    return True, ""


def _check_triton_query_sparse(q: torch.Tensor, *rest: object) -> tuple[bool, str]:
    ok, reason = check_triton(q)
    if ok and q.dtype not in _SUPPORTED_DTYPES:
        return False, f"needs fp16, bf16 or fp32 inputs; got {q.dtype}"
    if ok and q.shape[-1] > 256:
        return False, f"needs head dim <= 256; got {q.shape[-1]}"
    if ok:
        return _forward_only(q, *rest)
    return ok, reason


def _check_xformers_query_sparse(q: torch.Tensor, k: torch.Tensor, *rest: object) -> tuple[bool, str]:
    ok, reason = check_xformers(q, k)
    return _forward_only(q, k, *rest) if ok else (ok, reason)


_QUERY_SPARSE_BACKENDS = {
    "triton": _check_triton_query_sparse,
    "xformers": _check_xformers_query_sparse,
    "sdpa": _check_sdpa,
    "naive": check_always,
}


def _auto_order(device: torch.device, accelerated: list[str], dtype: torch.dtype = torch.bfloat16) -> list[str]:
    if device.type == "cuda":
        # fp32: the kernels would use IEEE fp32 dots (no tensor cores); PyTorch's fp32 attention is the better pick.
        return [*accelerated, "sdpa"] if dtype in (torch.float16, torch.bfloat16) else ["sdpa"]
    return ["sdpa"] if device.type == "cpu" else ["naive"]


def _check_qkv(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"{op}: q, k, v must be [B, S, H, D]; got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"{op}: shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                         "(need the same B, H, D and k.shape == v.shape)")
    if k.shape[1] == 0:
        raise ValueError(f"{op}: k and v need at least one key")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError(f"{op}: q, k, v must share dtype and device; got {q.dtype}/{k.dtype}/{v.dtype} on "
                         f"{q.device}/{k.device}/{v.device}")


def query_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_index: torch.Tensor | None = None,
    scale: float | None = None,
    *,
    backend: str | None = None,
    out_full: torch.Tensor | None = None,
    attention_backend=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention for selected query rows over all keys; returns ``(out [B,K,H,D], lse [B,K,H] fp32)``.

    Every computed row equals the same row of dense attention, LSE included (the LSE is Astraea's token score).
    Layout is diffusers' dispatch layout ``[B, S, H, D]``.

    Args:
        q: queries ``[B, Sq, H, D]``.
        k, v: keys and values ``[B, Skv, H, D]`` (all tokens).
        q_index: ``[B, K]`` (or ``[K]``, shared by the batch) integer rows of ``q`` to compute, any ``K``;
            ``None`` means ``q`` already holds only the selected rows. The triton backend gathers the rows inside
            the kernel; the others gather first.
        scale: softmax scale, default ``1/sqrt(D)``.
        backend: ``None`` (automatic), ``"triton"``, ``"xformers"``, ``"sdpa"`` or ``"naive"``; an explicit backend
            that cannot run raises :class:`BackendUnavailableError` saying what it needs.
        out_full: optional ``[B, Sq, H, D]`` buffer (``q.dtype``, needs ``q_index``): row ``j`` is written to
            ``out_full[:, q_index[:, j]]`` (in the kernel on triton; a scatter after the call elsewhere) and
            ``out_full`` is returned in place of the gathered ``out``.
        attention_backend: the diffusers attention backend the user chose (``set_attention_backend(...)``; the
            processors pass their ``_attention_backend``). Used through diffusers' ``dispatch_attention_fn`` with
            ``return_lse=True`` where that backend returns the LSE (see :mod:`.diffusers_backends`); otherwise the
            call falls back to ``backend`` (automatic by default) and logs that once, naming the backend.
            Ignored when ``backend`` is given explicitly.

    Returns:
        ``(out, lse)``: ``out`` ``[B, K, H, D]`` in ``q.dtype`` (or ``out_full``); ``lse`` ``[B, K, H]`` float32,
        the natural log of each row's sum of ``exp(scale * q·k)``.

    >>> q, k, v = (torch.randn(1, 10, 2, 16) for _ in range(3))
    >>> out, lse = query_sparse_attention(q, k, v, torch.tensor([[1, 4, 7]]))
    >>> out.shape, lse.shape
    (torch.Size([1, 3, 2, 16]), torch.Size([1, 3, 2]))
    """
    _check_qkv("query_sparse_attention", q, k, v)
    if q_index is not None:
        if q_index.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"query_sparse_attention: q_index must be int32 or int64; got {q_index.dtype}")
        if q_index.dim() == 1:
            q_index = q_index.unsqueeze(0).expand(q.shape[0], -1)
        if q_index.dim() != 2 or q_index.shape[0] != q.shape[0]:
            raise ValueError(f"query_sparse_attention: q_index must be [B, K] with B={q.shape[0]}; got "
                             f"{tuple(q_index.shape)}")
        if q_index.device != q.device:
            raise ValueError(f"query_sparse_attention: q_index is on {q_index.device}, q on {q.device}")
        if q_index.device.type == "cpu" and q_index.numel() and not (
                0 <= int(q_index.min()) and int(q_index.max()) < q.shape[1]):
            raise IndexError(f"query_sparse_attention: q_index must lie in [0, {q.shape[1]}); got "
                             f"[{int(q_index.min())}, {int(q_index.max())}]")
    if out_full is not None:
        if q_index is None:
            raise ValueError("query_sparse_attention: out_full needs q_index (the rows to write)")
        if out_full.shape != q.shape or out_full.dtype != q.dtype or out_full.device != q.device:
            raise ValueError(f"query_sparse_attention: out_full must be like q {tuple(q.shape)} {q.dtype}; got "
                             f"{tuple(out_full.shape)} {out_full.dtype} on {out_full.device}")
    if attention_backend is not None and backend is None:
        if lse_supported(attention_backend):
            if q_index is not None:
                q = gather_rows(q, q_index)
            out, lse = diffusers_query_sparse_attention(q, k, v, scale, attention_backend)
            return (scatter_rows_(out_full, q_index, out) if out_full is not None else out), lse
    user_choice = attention_backend is not None and backend is None
    if user_choice:
        backend = own_backend(attention_backend)
    name = resolve("query_sparse_attention", backend, _QUERY_SPARSE_BACKENDS,
                   _auto_order(q.device, ["triton", "xformers"], q.dtype), q, k, v)
    if user_choice:
        log_fallback(attention_backend, name)
    if name == "triton":
        from .query_sparse.triton import triton_query_sparse_attention

        return triton_query_sparse_attention(q, k, v, q_index, scale, out_full=out_full)
    if name == "xformers":
        from .query_sparse.xformers_partial import xformers_query_sparse_attention as fn
    elif name == "sdpa":
        fn = sdpa_query_sparse_attention
    else:
        fn = naive_query_sparse_attention
    out, lse = fn(q, k, v, q_index, scale)
    if out_full is not None:
        out = scatter_rows_(out_full, q_index, out)
    return out, lse


def _check_triton_channel_reuse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                plan: ChannelReusePlan) -> tuple[bool, str]:
    ok, reason = _check_triton_query_sparse(q, k, v)
    if not ok:
        return ok, reason
    return check_plan_for_triton(plan)


_CHANNEL_REUSE_BACKENDS = {
    "triton": _check_triton_channel_reuse,
    "sdpa": _check_sdpa,
    "naive": check_always,
}


def channel_reuse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: ChannelReusePlan,
    scale: float | None = None,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with channel-block score reuse between neighbouring token tiles (TimeRipple's kernel path).

    The operation is defined in :mod:`vdit_accel.kernels.channel_reuse.naive`: follower tiles take their anchor
    tile's partial scores in the channel blocks ``plan`` marks as reused, ``S = S_anchor + ΔQ_kept·K_keptᵀ``.
    Only the triton backend turns the saving into time; the others substitute the reused query entries and run
    dense attention (same result, no saving), which is also exactly what ``plan.saved_fraction`` would save.

    Args:
        q: post-RoPE queries of the video tokens ``[B, S, H, D]``, ``S = F * Hh * Ww`` of ``plan.grid``.
        k, v: ``[B, Skv, H, D]`` (may include text tokens).
        plan: from :func:`channel_reuse_plan` on the same ``q``.
        scale: softmax scale, default ``1/sqrt(D)``.
        backend: ``None`` (automatic), ``"triton"``, ``"sdpa"`` or ``"naive"``.

    Returns:
        ``(out [B, S, H, D] q.dtype, lse [B, S, H] fp32)``.

    >>> q, k, v = (torch.randn(1, 2 * 4 * 4, 2, 32) for _ in range(3))
    >>> plan = channel_reuse_plan(q, (2, 4, 4), theta=0.1, tile_tokens=16, tiles_per_group=2)
    >>> out, lse = channel_reuse_attention(q, k, v, plan)
    >>> out.shape, 0.0 <= float(plan.saved_fraction) <= 0.5
    (torch.Size([1, 32, 2, 32]), True)
    """
    _check_qkv("channel_reuse_attention", q, k, v)
    B, S, H, D = q.shape
    grid = plan.grid
    if S != grid[0] * grid[1] * grid[2] or D != plan.head_dim or tuple(plan.reuse.shape[:2]) != (B, H):
        raise ValueError(f"channel_reuse_attention: the plan was made for B, H = {tuple(plan.reuse.shape[:2])}, grid "
                         f"{grid}, head dim {plan.head_dim}; q is {tuple(q.shape)}. Make the plan from this q.")
    name = resolve("channel_reuse_attention", backend, _CHANNEL_REUSE_BACKENDS,
                   _auto_order(q.device, ["triton"], q.dtype), q, k, v, plan)
    if name == "triton":
        from .channel_reuse.triton import triton_channel_reuse_attention

        return triton_channel_reuse_attention(q, k, v, plan, scale)
    if name == "sdpa":
        return sdpa_channel_reuse_attention(q, k, v, plan, scale)
    return naive_channel_reuse_attention(q, k, v, plan, scale)


__all__ = [
    "BackendUnavailableError",
    "ChannelReusePlan",
    "apply_reuse",
    "channel_reuse_attention",
    "channel_reuse_plan",
    "gather_rows",
    "naive_channel_reuse_attention",
    "naive_query_sparse_attention",
    "query_sparse_attention",
    "scatter_rows_",
    "sdpa_channel_reuse_attention",
    "sdpa_query_sparse_attention",
]
