"""Query-sparse attention on the attention backend a user chose with diffusers' ``set_attention_backend(...)``.

The token scores need each computed row's log-sum-exp, so a backend is used only where diffusers' dispatcher
(``dispatch_attention_fn``) returns it (``return_lse=True``) in a layout known here. Any other choice falls back to
vdit-accel's own dispatch (:func:`vdit_accel.kernels.query_sparse_attention`), with one log line naming the backend.
"""

from __future__ import annotations

import torch

from .dispatch import log_once

# Backends whose ``return_lse=True`` result diffusers 0.42 returns without a parallel config, by LSE layout.
# The others raise on ``return_lse`` (native, _native_math, _native_efficient, xformers, ...), need a context-parallel
# config for it (_native_flash, _native_cudnn), break on it (flex), return it packed (varlen backends) or in a layout
# not checked here (sage, other hub kernels).
_LSE_MODEL_LAYOUT = {"_flash_3"}  # [B, S, H]
_LSE_HEADS_FIRST = {"flash", "flash_hub"}  # [B, H, S]
# PyTorch's own fused attention: vdit-accel's "sdpa" backend calls the same kernels with the LSE (flash for fp16/bf16
# on CUDA, memory-efficient for fp32, the tiled flash kernel on CPU), so these choices map to it.
_SAME_AS_SDPA = {"native", "_native_flash", "_native_efficient"}


def backend_name(backend) -> str | None:
    """The plain string of a diffusers backend (``AttentionBackendName`` or ``str``), or ``None``."""
    if backend is None:
        return None
    return str(getattr(backend, "value", backend))


def lse_supported(backend) -> bool:
    name = backend_name(backend)
    return name in _LSE_MODEL_LAYOUT or name in _LSE_HEADS_FIRST


def own_backend(backend) -> str | None:
    """vdit-accel's backend that runs the same kernels as the diffusers ``backend`` (``None``: automatic)."""
    return "sdpa" if backend_name(backend) in _SAME_AS_SDPA else None


def log_fallback(backend, used: str) -> None:
    if backend_name(backend) in _SAME_AS_SDPA:
        log_once(f"query_sparse_attention: attention backend {backend_name(backend)!r} (set with "
                 f"set_attention_backend()) runs as vdit-accel's 'sdpa' backend: the same PyTorch kernels, with the "
                 f"log-sum-exp token selection needs.")
        return
    log_once(f"query_sparse_attention: the attention backend {backend_name(backend)!r} set with "
             f"set_attention_backend() cannot return the per-row log-sum-exp that token selection scores with "
             f"(or returns it in a layout vdit-accel does not know); query-sparse attention uses vdit-accel's "
             f"{used!r} backend instead. Backends used as set: {sorted(_LSE_MODEL_LAYOUT | _LSE_HEADS_FIRST)}.")


def diffusers_query_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
                                     backend) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [B, K, H, D], lse [B, K, H] fp32)`` of the (already gathered) queries ``q`` through diffusers'
    dispatcher on ``backend`` (one of the backends :func:`lse_supported` accepts)."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    name = backend_name(backend)
    out, lse = dispatch_attention_fn(q, k, v, scale=scale, attention_kwargs={"return_lse": True}, backend=name)
    if name in _LSE_HEADS_FIRST:
        lse = lse[..., :q.shape[1]].transpose(1, 2)
    return out, lse.float().contiguous()
