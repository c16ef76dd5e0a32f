"""Attention under context parallelism: an LSE-returning forward op for diffusers' templated context-parallel attention,
the query-sparse context-parallel attention of accelerated transformers, and the CPU case of ``_native_flash``."""

from __future__ import annotations

from typing import Callable

import torch
from diffusers.models import attention_dispatch as _ad
from diffusers.models._modeling_parallel import ParallelConfig

from ..kernels import query_sparse_attention


def lse_forward_op(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):
    """A diffusers templated-CP ``forward_op`` (``[B, S, H, D]`` layout) that returns ``(out, lse)``, built on
    :func:`vdit_accel.kernels.query_sparse_attention`. ``query`` may have fewer rows than ``key`` (query-sparse)."""
    if attn_mask is not None or dropout_p or is_causal or enable_gqa:
        raise NotImplementedError("vdit-accel's context-parallel attention supports no mask, dropout, causal "
                                  "attention or GQA.")
    out, lse = query_sparse_attention(query, key, value, scale=scale)
    return (out, lse) if return_lse else out


def backward_op(ctx, *args, **kwargs):
    raise NotImplementedError("vdit-accel's context-parallel attention is inference-only (no backward).")


def templated_lse(q, k, v, parallel_config):
    out, lse = _ad._templated_context_parallel_attention(
        q, k, v, None, 0.0, False, None, False, True,
        forward_op=lse_forward_op, backward_op=backward_op, _parallel_config=parallel_config)
    return out, lse.float()


def make_cp_attention_fn(parallel_config: ParallelConfig, runtime=None, text_keys: str | None = None) -> Callable:
    """``runtime.attention_fn`` for a context-parallel transformer: ``(q, k, v) -> (out, lse)`` where ``q`` holds
    this rank's selected query rows and ``k``/``v`` this rank's whole shard; ``out``/``lse`` are this rank's rows of
    exact attention over *all* ranks' keys (Ulysses, ring or unified, chosen by diffusers from the config).

    ``text_keys`` (``"first"`` / ``"last"``) is for joint-attention families whose plan keeps the text *whole on every
    rank* (HunyuanVideo, Mochi): the keys are then ``[video shard, text]``; the video keys go through diffusers'
    context-parallel attention, the text keys (the same on every rank, so counted once) through a local
    query-sparse attention, and the two partial results are merged exactly by their LSE. The number of text keys is
    ``k.shape[1] - runtime.selection.num_video`` (the block's local video count).
    """

    def cp_query_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        n_text = 0
        if text_keys is not None and runtime is not None and runtime.selection is not None:
            n_text = k.shape[1] - runtime.selection.num_video
        if n_text <= 0:
            out, lse = templated_lse(q, k, v, parallel_config)
            return out.to(q.dtype), lse
        if text_keys == "last":
            (kv, kt), (vv, vt) = k.split([k.shape[1] - n_text, n_text], 1), v.split([k.shape[1] - n_text, n_text], 1)
        else:
            (kt, kv), (vt, vv) = k.split([n_text, k.shape[1] - n_text], 1), v.split([n_text, k.shape[1] - n_text], 1)
        out_v, lse_v = templated_lse(q, kv.contiguous(), vv.contiguous(), parallel_config)
        out_t, lse_t = query_sparse_attention(q, kt.contiguous(), vt.contiguous())
        lse = torch.logaddexp(lse_v, lse_t.float())
        out = (out_v.float() * torch.exp(lse_v - lse).unsqueeze(-1)
               + out_t.float() * torch.exp(lse_t.float() - lse).unsqueeze(-1))
        return out.to(q.dtype), lse

    cp_query_sparse_attention._vdit_accel_cp = parallel_config
    return cp_query_sparse_attention


def install_cpu_lse_backend() -> None:
    """Give diffusers' ``_native_flash`` backend a CPU case (idempotent).

    ``_native_flash`` is context-parallel capable but calls ``aten::_scaled_dot_product_flash_attention``, which has no
    CPU kernel, so on CPU it can only raise. The replacement sends CPU tensors through :func:`lse_forward_op` (plain
    SDPA when no parallel config and no LSE is wanted) and every other device to diffusers' own function unchanged.
    """
    registry = _ad._AttentionBackendRegistry
    name = _ad.AttentionBackendName._NATIVE_FLASH
    original = registry._backends[name]
    if getattr(original, "_vdit_accel_cpu", False):
        return

    def native_flash_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                               enable_gqa=False, return_lse=False, _parallel_config=None):
        if query.device.type != "cpu":
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                            scale=scale, enable_gqa=enable_gqa, return_lse=return_lse,
                            _parallel_config=_parallel_config)
        if _parallel_config is None:
            if not return_lse:
                q, k, v = (x.permute(0, 2, 1, 3) for x in (query, key, value))
                out = torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
                return out.permute(0, 2, 1, 3)
            return lse_forward_op(None, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, True)
        return _ad._templated_context_parallel_attention(
            query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, return_lse,
            forward_op=lse_forward_op, backward_op=backward_op, _parallel_config=_parallel_config)

    native_flash_attention._vdit_accel_cpu = True
    native_flash_attention._vdit_accel_original = original
    registry._backends[name] = native_flash_attention
