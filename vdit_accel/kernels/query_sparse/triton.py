"""Triton query-sparse attention: flash-attention forward over selected query rows, gathered inside the kernel.

Layers (FLA style): ``_query_sparse_fwd_kernel`` (jit) -> ``query_sparse_attention_fwd`` (launcher: block sizes,
grid, allocation, keyword launch) -> the public ``triton_query_sparse_attention``. Imported only when the triton
backend runs; under ``TRITON_INTERPRET=1`` (read by triton when this module is first imported) the same kernel
runs on CPU tensors for the tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import triton_interpret

_LOG2E = 1.4426950408889634

# The kernels use only triton builtins and their own @jit helpers, not the stdlib's @jit functions (tl.zeros,
# tl.max, tl.sum): those are decorated when triton is first imported, often by diffusers before a test sets
# TRITON_INTERPRET=1, and the interpreter cannot call them then. tl.reduce with these combiners is what tl.max and
# tl.sum compile to.


@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


@triton.jit
def _sum_combine(a, b):
    return a + b


@triton.jit
def _dot(a, b, acc, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    # DOT_F32: the interpreter multiplies bf16 as raw uint16, so interpreted bf16 runs upcast the (exact) operands.
    if DOT_F32:
        res = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PRECISION)
    else:
        res = tl.dot(a, b, acc, input_precision=PRECISION)
    return res


@triton.jit
def _online_softmax_tile(acc, l_i, m_i, qt, k_base, v_base, start_n, S_KV, D, stride_ks, stride_kd, stride_vs,
                         stride_vd, qk_scale, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, MASK_N: tl.constexpr,
                         MASK_D: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    # qt: [BLOCK_M, BLOCK_D] queries; one key/value tile [BLOCK_N, BLOCK_D] from row start_n; base-2 online softmax.
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k_ptrs = k_base + offs_n[:, None] * stride_ks + offs_d[None, :] * stride_kd
    v_ptrs = v_base + offs_n[:, None] * stride_vs + offs_d[None, :] * stride_vd
    if MASK_N:
        kv_mask = (offs_n[:, None] < S_KV) & (offs_d[None, :] < D)
        kt = tl.load(k_ptrs, mask=kv_mask, other=0.0)
        vt = tl.load(v_ptrs, mask=kv_mask, other=0.0)
    elif MASK_D:
        kt = tl.load(k_ptrs, mask=offs_d[None, :] < D, other=0.0)
        vt = tl.load(v_ptrs, mask=offs_d[None, :] < D, other=0.0)
    else:
        kt = tl.load(k_ptrs)
        vt = tl.load(v_ptrs)
    s = _dot(qt, tl.trans(kt), tl.full([qt.shape[0], BLOCK_N], 0.0, dtype=tl.float32), DOT_F32, PRECISION) * qk_scale
    if MASK_N:
        s = tl.where(offs_n[None, :] < S_KV, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.reduce(s, 1, _max_combine))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.reduce(p, 1, _sum_combine)
    acc = _dot(p.to(vt.dtype), vt, acc * alpha[:, None], DOT_F32, PRECISION)
    return acc, l_i, m_new


@triton.jit
def _query_sparse_fwd_kernel(
    q, k, v, q_index, out, lse,
    stride_qb, stride_qs, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_ib, stride_ik,
    stride_ob, stride_os, stride_oh, stride_od,
    stride_lb, stride_lk, stride_lh,
    H, K_SEL, S_KV, D, qk_scale,
    HAS_INDEX: tl.constexpr, SCATTER: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
):
    # q: [B, Sq, H, D] full queries (never gathered); k, v: [B, S_KV, H, D]; q_index: [B, K_SEL] int32/int64 rows of q
    # out: [B, K_SEL, H, D] in selection order, or [B, Sq, H, D] written at rows q_index (SCATTER); lse: [B, K_SEL, H]
    # grid: (cdiv(K_SEL, BLOCK_M), B * H); qk_scale = softmax scale * log2(e)
    tl.static_assert(BLOCK_D >= 16, "tl.dot needs a head-dim tile of at least 16")
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < K_SEL
    if HAS_INDEX:
        rows = tl.load(q_index + off_b * stride_ib + offs_m * stride_ik, mask=m_mask, other=0).to(tl.int64)
    else:
        rows = offs_m.to(tl.int64)
    md_mask = m_mask[:, None] & (offs_d[None, :] < D)
    q_ptrs = q + off_b * stride_qb + off_h * stride_qh + rows[:, None] * stride_qs + offs_d[None, :] * stride_qd
    qt = tl.load(q_ptrs, mask=md_mask, other=0.0)

    k_base = k + off_b * stride_kb + off_h * stride_kh
    v_base = v + off_b * stride_vb + off_h * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, dtype=tl.float32)
    # Full key tiles without the row mask, then one masked tail tile: no multiple-of-BLOCK_N rule for S_KV.
    n_full = (S_KV // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        acc, l_i, m_i = _online_softmax_tile(acc, l_i, m_i, qt, k_base, v_base, start_n, S_KV, D, stride_ks,
                                             stride_kd, stride_vs, stride_vd, qk_scale, BLOCK_N, BLOCK_D, False,
                                             BLOCK_D != D, DOT_F32, PRECISION)
    if n_full < S_KV:
        acc, l_i, m_i = _online_softmax_tile(acc, l_i, m_i, qt, k_base, v_base, n_full, S_KV, D, stride_ks,
                                             stride_kd, stride_vs, stride_vd, qk_scale, BLOCK_N, BLOCK_D, True,
                                             BLOCK_D != D, DOT_F32, PRECISION)

    if SCATTER:
        o_rows = rows
    else:
        o_rows = offs_m.to(tl.int64)
    o_ptrs = out + off_b * stride_ob + off_h * stride_oh + o_rows[:, None] * stride_os + offs_d[None, :] * stride_od
    tl.store(o_ptrs, (acc / l_i[:, None]).to(out.dtype.element_ty), mask=md_mask)
    # Natural-log LSE of the scaled logits: ln(sum 2^(s2)) = (m + log2 l) * ln 2.
    lse_i = (m_i + tl.log2(l_i)) * 0.6931471805599453
    tl.store(lse + off_b * stride_lb + off_h * stride_lh + offs_m * stride_lk, lse_i, mask=m_mask)


def _keep(conf: triton.Config) -> bool:
    # 128x128 tiles need 8 warps to hold the fp32 accumulators without spilling.
    bm, bn = conf.kwargs["BLOCK_M"], conf.kwargs["BLOCK_N"]
    return not (bm * bn >= 128 * 128 and conf.num_warps < 8)


_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm in (64, 128) for bn in (64, 128) for w in (4, 8) for s in (2, 3)
]

_query_sparse_fwd_kernel_tuned = triton.autotune(
    configs=[c for c in _CONFIGS if _keep(c)], key=["BLOCK_D", "HAS_INDEX", "SCATTER"]
)(_query_sparse_fwd_kernel)

# Small fixed tiles for the interpreter (every program runs in numpy; autotuning there would only cost time).
INTERPRET_BLOCK_M, INTERPRET_BLOCK_N = 16, 32


def query_sparse_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_index: torch.Tensor | None = None,
    scale: float | None = None,
    *,
    out_full: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch :func:`_query_sparse_fwd_kernel`; see :func:`triton_query_sparse_attention` for the contract.

    ``block_m``/``block_n`` pin the tile sizes (and skip autotuning); by default CUDA autotunes once per head dim and
    the interpreter uses 16 x 32 tiles.
    """
    B, Sq, H, D = q.shape
    S_KV = k.shape[1]
    n_sel = Sq if q_index is None else q_index.shape[1]
    lse = torch.empty(B, n_sel, H, device=q.device, dtype=torch.float32)
    if out_full is not None:
        out = out_full
    else:
        out = torch.empty(B, n_sel, H, D, device=q.device, dtype=q.dtype)
    if n_sel == 0 or B * H == 0:
        return out, lse
    index = q_index if q_index is not None else lse  # any tensor; unused when HAS_INDEX is False
    stride_ib, stride_ik = (q_index.stride(0), q_index.stride(1)) if q_index is not None else (0, 0)
    interpret = q.device.type == "cpu" and triton_interpret()
    if interpret and not _interpreted():
        raise RuntimeError(
            "vdit_accel.kernels.query_sparse.triton was imported before TRITON_INTERPRET=1 was set, so its kernel "
            "was compiled for the GPU; set TRITON_INTERPRET=1 before the first import of the kernel modules.")
    scale = D ** -0.5 if scale is None else float(scale)
    kwargs = dict(
        q=q, k=k, v=v, q_index=index, out=out, lse=lse,
        stride_qb=q.stride(0), stride_qs=q.stride(1), stride_qh=q.stride(2), stride_qd=q.stride(3),
        stride_kb=k.stride(0), stride_ks=k.stride(1), stride_kh=k.stride(2), stride_kd=k.stride(3),
        stride_vb=v.stride(0), stride_vs=v.stride(1), stride_vh=v.stride(2), stride_vd=v.stride(3),
        stride_ib=stride_ib, stride_ik=stride_ik,
        stride_ob=out.stride(0), stride_os=out.stride(1), stride_oh=out.stride(2), stride_od=out.stride(3),
        stride_lb=lse.stride(0), stride_lk=lse.stride(1), stride_lh=lse.stride(2),
        H=H, K_SEL=n_sel, S_KV=S_KV, D=D, qk_scale=scale * _LOG2E,
        HAS_INDEX=q_index is not None, SCATTER=out_full is not None,
        BLOCK_D=max(16, triton.next_power_of_2(D)),
        DOT_F32=interpret and q.dtype == torch.bfloat16,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    if interpret or block_m is not None or block_n is not None:
        bm = block_m or (INTERPRET_BLOCK_M if interpret else 128)
        bn = block_n or (INTERPRET_BLOCK_N if interpret else 64)
        grid = (triton.cdiv(n_sel, bm), B * H)
        _query_sparse_fwd_kernel[grid](**kwargs, BLOCK_M=bm, BLOCK_N=bn)
    else:
        grid = lambda meta: (triton.cdiv(n_sel, meta["BLOCK_M"]), B * H)  # noqa: E731
        _query_sparse_fwd_kernel_tuned[grid](**kwargs)
    return out, lse


def _interpreted() -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_query_sparse_fwd_kernel, InterpretedFunction)


def triton_query_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_index: torch.Tensor | None = None,
    scale: float | None = None,
    *,
    out_full: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query-sparse attention with the selected rows gathered inside the kernel (no gathered copy of ``q``).

    Args:
        q: full queries ``[B, Sq, H, D]`` (fp16/bf16 on GPU; fp32 too), any strides.
        k, v: ``[B, Skv, H, D]``, same dtype as ``q``.
        q_index: ``[B, K]`` int32/int64 rows of ``q`` to compute, any ``K`` (ragged tiles are masked); ``None``
            computes every row of ``q``. Indices must lie in ``[0, Sq)`` (not checked on the GPU: it would sync).
        scale: softmax scale, default ``1/sqrt(D)``.
        out_full: optional ``[B, Sq, H, D]`` buffer of ``q.dtype``; the kernel writes each computed row into it at
            row ``q_index[b, j]`` (a scatter without a second pass) and returns it in place of the gathered output.

    Returns:
        ``(out, lse)``: ``out`` ``[B, K, H, D]`` (or ``out_full``) in ``q.dtype``; ``lse`` ``[B, K, H]`` fp32, the
        natural-log sum of ``exp(scale * q.k)`` over all keys, in selection order.
    """
    return query_sparse_attention_fwd(q, k, v, q_index, scale, out_full=out_full)
