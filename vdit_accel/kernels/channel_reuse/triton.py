"""Triton channel-block reuse attention: reused channel blocks of follower tiles are never multiplied.

One program computes one reuse group (T tiles x BLOCK_M tokens, see :mod:`.naive`) for one (batch, head), as a
flash-attention forward over ``T * BLOCK_M`` query rows. Per key tile and channel block ``c``: a kept block is
one ``[T*BM, BC] x [BC, BN]`` product over all rows; a reused block is one ``[BM, BC] x [BC, BN]`` product over the
anchor rows, broadcast to the followers. So ``S = S_anchor + ΔQ_kept·K_keptᵀ`` costs
``NC·BM + |kept|·(T-1)·BM`` row-blocks instead of ``NC·T·BM``. Softmax and ``P·V`` are unchanged (dense).

Layers: ``_channel_reuse_fwd_kernel`` -> ``channel_reuse_attention_fwd`` (launcher) ->
``triton_channel_reuse_attention``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import triton_interpret
from ..query_sparse.triton import _dot, _max_combine, _sum_combine
from .naive import ChannelReusePlan, check_plan_for_triton

_LOG2E = 1.4426950408889634


@triton.jit
def _channel_reuse_tile(acc, l_i, m_i, qs, q0s, flags, k_base, v_base, start_n, S_KV, D, stride_ks, stride_kd,
                        stride_vs, stride_vd, qk_scale, T: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, NUM_C: tl.constexpr, BLOCK_D: tl.constexpr,
                        MASK_N: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    # qs[c]: [T*BM, BC] queries of channel block c (all tiles); q0s[c]: [BM, BC] anchor rows; flags[c]: 1 = reused
    # one key/value tile [BLOCK_N, *] from row start_n; online softmax in base 2
    TM: tl.constexpr = T * BLOCK_M
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, BLOCK_C)
    n_mask = offs_n < S_KV
    s = tl.full([TM, BLOCK_N], 0.0, dtype=tl.float32)  # kept blocks, every row
    s0 = tl.full([BLOCK_M, BLOCK_N], 0.0, dtype=tl.float32)  # reused blocks, anchor rows only
    for c in tl.static_range(NUM_C):
        cols = c * BLOCK_C + offs_c
        k_ptrs = k_base + offs_n[:, None] * stride_ks + cols[None, :] * stride_kd
        if MASK_N:
            kc = tl.load(k_ptrs, mask=n_mask[:, None] & (cols[None, :] < D), other=0.0)
        elif NUM_C * BLOCK_C != D:
            kc = tl.load(k_ptrs, mask=cols[None, :] < D, other=0.0)
        else:
            kc = tl.load(k_ptrs)
        if flags[c] != 0:
            s0 = _dot(q0s[c], tl.trans(kc), s0, DOT_F32, PRECISION)
        else:
            s = _dot(qs[c], tl.trans(kc), s, DOT_F32, PRECISION)
    # S_follower = S_anchor(reused blocks) + Q_follower(kept blocks)·Kᵀ: the anchor's part, broadcast over T tiles.
    s = s + tl.reshape(tl.broadcast_to(s0[None, :, :], (T, BLOCK_M, BLOCK_N)), (TM, BLOCK_N))
    s = s * qk_scale
    if MASK_N:
        s = tl.where(n_mask[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.reduce(s, 1, _max_combine))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.reduce(p, 1, _sum_combine)
    offs_d = tl.arange(0, BLOCK_D)
    v_ptrs = v_base + offs_n[:, None] * stride_vs + offs_d[None, :] * stride_vd
    if MASK_N:
        vt = tl.load(v_ptrs, mask=n_mask[:, None] & (offs_d[None, :] < D), other=0.0)
    elif BLOCK_D != D:
        vt = tl.load(v_ptrs, mask=offs_d[None, :] < D, other=0.0)
    else:
        vt = tl.load(v_ptrs)
    acc = _dot(p.to(vt.dtype), vt, acc * alpha[:, None], DOT_F32, PRECISION)
    return acc, l_i, m_new


@triton.jit
def _channel_reuse_fwd_kernel(
    q, k, v, tile_index, reuse, out, lse,
    stride_qb, stride_qs, stride_qh, stride_qd,
    stride_kb, stride_ks, stride_kh, stride_kd,
    stride_vb, stride_vs, stride_vh, stride_vd,
    stride_rb, stride_rh, stride_rg, stride_rc,
    stride_ob, stride_os, stride_oh, stride_od,
    stride_lb, stride_ls, stride_lh,
    H, S_KV, D, qk_scale,
    T: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, NUM_C: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
):
    # q: [B, S, H, D] grid queries; k, v: [B, S_KV, H, D]; tile_index: [G, T, BLOCK_M] int32 token ids (-1 = pad),
    # tile 0 = anchor; reuse: [B, H, G, NUM_C] int8 (1 = followers reuse the anchor's partial scores of block c)
    # out: [B, S, H, D] (rows scattered to their token ids); lse: [B, S, H] fp32; grid: (G, B * H)
    # NUM_C = cdiv(D, BLOCK_C) channel blocks for the scores; BLOCK_D = next_pow2(D) columns for V and the output
    tl.static_assert(BLOCK_M >= 16, "tile_tokens must be >= 16 (tl.dot)")
    tl.static_assert(BLOCK_C >= 16, "block_channels must be >= 16 (tl.dot)")
    TM: tl.constexpr = T * BLOCK_M
    pid_g = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    tok = tl.load(tile_index + pid_g * TM + tl.arange(0, TM))
    valid = tok >= 0
    rows = tl.where(valid, tok, 0).to(tl.int64)
    tok0 = tl.load(tile_index + pid_g * TM + tl.arange(0, BLOCK_M))
    valid0 = tok0 >= 0
    rows0 = tl.where(valid0, tok0, 0).to(tl.int64)

    q_base = q + off_b * stride_qb + off_h * stride_qh
    r_base = reuse + off_b * stride_rb + off_h * stride_rh + pid_g * stride_rg
    offs_c = tl.arange(0, BLOCK_C)
    # Q stays in registers for the whole key loop, one tensor per channel block (tuples index by constexpr).
    qs = ()
    q0s = ()
    flags = ()
    for c in tl.static_range(NUM_C):
        cols = c * BLOCK_C + offs_c
        c_mask = cols[None, :] < D
        qs = qs + (tl.load(q_base + rows[:, None] * stride_qs + cols[None, :] * stride_qd,
                           mask=valid[:, None] & c_mask, other=0.0),)
        q0s = q0s + (tl.load(q_base + rows0[:, None] * stride_qs + cols[None, :] * stride_qd,
                             mask=valid0[:, None] & c_mask, other=0.0),)
        flags = flags + (tl.load(r_base + c * stride_rc),)

    k_base = k + off_b * stride_kb + off_h * stride_kh
    v_base = v + off_b * stride_vb + off_h * stride_vh
    m_i = tl.full([TM], float("-inf"), dtype=tl.float32)
    l_i = tl.full([TM], 0.0, dtype=tl.float32)
    acc = tl.full([TM, BLOCK_D], 0.0, dtype=tl.float32)
    n_full = (S_KV // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        acc, l_i, m_i = _channel_reuse_tile(acc, l_i, m_i, qs, q0s, flags, k_base, v_base, start_n, S_KV, D,
                                            stride_ks, stride_kd, stride_vs, stride_vd, qk_scale, T, BLOCK_M,
                                            BLOCK_N, BLOCK_C, NUM_C, BLOCK_D, False, DOT_F32, PRECISION)
    if n_full < S_KV:
        acc, l_i, m_i = _channel_reuse_tile(acc, l_i, m_i, qs, q0s, flags, k_base, v_base, n_full, S_KV, D,
                                            stride_ks, stride_kd, stride_vs, stride_vd, qk_scale, T, BLOCK_M,
                                            BLOCK_N, BLOCK_C, NUM_C, BLOCK_D, True, DOT_F32, PRECISION)

    offs_d = tl.arange(0, BLOCK_D)
    o_ptrs = out + off_b * stride_ob + off_h * stride_oh + rows[:, None] * stride_os + offs_d[None, :] * stride_od
    tl.store(o_ptrs, (acc / l_i[:, None]).to(out.dtype.element_ty), mask=valid[:, None] & (offs_d[None, :] < D))
    lse_i = (m_i + tl.log2(l_i)) * 0.6931471805599453
    tl.store(lse + off_b * stride_lb + off_h * stride_lh + rows * stride_ls, lse_i, mask=valid)


_CONFIGS = [triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bn in (32, 64, 128) for w in (4, 8) for s in (2, 3)]

_channel_reuse_fwd_kernel_tuned = triton.autotune(
    configs=_CONFIGS, key=["T", "BLOCK_M", "BLOCK_C", "NUM_C"]
)(_channel_reuse_fwd_kernel)

INTERPRET_BLOCK_N = 32


def channel_reuse_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: ChannelReusePlan,
    scale: float | None = None,
    *,
    block_n: int | None = None,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch :func:`_channel_reuse_fwd_kernel` for ``plan``; see :func:`triton_channel_reuse_attention`."""
    ok, reason = check_plan_for_triton(plan)
    if not ok:
        raise ValueError(f"channel_reuse_attention(backend='triton') {reason}")
    B, S, H, D = q.shape
    S_KV = k.shape[1]
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(B, S, H, device=q.device, dtype=torch.float32)
    if B * H * S == 0:
        return out, lse
    interpret = q.device.type == "cpu" and triton_interpret()
    if interpret and not _interpreted():
        raise RuntimeError(
            "vdit_accel.kernels.channel_reuse.triton was imported before TRITON_INTERPRET=1 was set, so its kernel "
            "was compiled for the GPU; set TRITON_INTERPRET=1 before the first import of the kernel modules.")
    tile_index = plan.tile_index.to(device=q.device, dtype=torch.int32).contiguous()
    reuse = plan.reuse.to(device=q.device, dtype=torch.int8)
    G = tile_index.shape[0]
    scale = D ** -0.5 if scale is None else float(scale)
    kwargs = dict(
        q=q, k=k, v=v, tile_index=tile_index, reuse=reuse, out=out, lse=lse,
        stride_qb=q.stride(0), stride_qs=q.stride(1), stride_qh=q.stride(2), stride_qd=q.stride(3),
        stride_kb=k.stride(0), stride_ks=k.stride(1), stride_kh=k.stride(2), stride_kd=k.stride(3),
        stride_vb=v.stride(0), stride_vs=v.stride(1), stride_vh=v.stride(2), stride_vd=v.stride(3),
        stride_rb=reuse.stride(0), stride_rh=reuse.stride(1), stride_rg=reuse.stride(2), stride_rc=reuse.stride(3),
        stride_ob=out.stride(0), stride_os=out.stride(1), stride_oh=out.stride(2), stride_od=out.stride(3),
        stride_lb=lse.stride(0), stride_ls=lse.stride(1), stride_lh=lse.stride(2),
        H=H, S_KV=S_KV, D=D, qk_scale=scale * _LOG2E,
        T=plan.tiles_per_group, BLOCK_M=plan.tile_tokens, BLOCK_C=plan.block_channels,
        NUM_C=plan.num_channel_blocks, BLOCK_D=max(16, triton.next_power_of_2(D)),
        DOT_F32=interpret and q.dtype == torch.bfloat16,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    grid = (G, B * H)
    if interpret or block_n is not None:
        launch = dict(BLOCK_N=block_n or INTERPRET_BLOCK_N)
        if num_warps is not None:
            launch["num_warps"] = num_warps
        _channel_reuse_fwd_kernel[grid](**kwargs, **launch)
    else:
        _channel_reuse_fwd_kernel_tuned[grid](**kwargs)
    return out, lse


def _interpreted() -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_channel_reuse_fwd_kernel, InterpretedFunction)


def triton_channel_reuse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: ChannelReusePlan,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-block reuse attention on the Triton kernel: ``(out [B, S, H, D] q.dtype, lse [B, S, H] fp32)``."""
    return channel_reuse_attention_fwd(q, k, v, plan, scale)
