"""Channel-block reuse attention: plan, references and the Triton kernel (interpreted, small shapes)."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any import of vdit_accel.kernels.*.triton

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import vdit_accel.kernels as K  # noqa: E402
from vdit_accel.kernels import dispatch  # noqa: E402
from vdit_accel.kernels.channel_reuse import (  # noqa: E402
    apply_reuse,
    channel_reuse_plan,
    naive_channel_reuse_attention,
    naive_channel_reuse_scores,
    reuse_groups,
)

needs_interpreted_triton = pytest.mark.skipif(
    not (dispatch.package_available("triton") and dispatch.triton_interpret()),
    reason="needs the `triton` package and TRITON_INTERPRET=1")

RATIO = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
LSE_ATOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def assert_close(name: str, ref: torch.Tensor, got: torch.Tensor, ratio: float) -> None:
    ref, got = ref.float(), got.float()
    assert not torch.isnan(got).any(), f"{name}: NaN in output"
    err = ((ref - got).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-12)).item()
    assert err <= ratio, f"{name}: RMS error ratio {err:.2e} > {ratio:.0e} (max abs diff {(ref - got).abs().max():.2e})"


def video_qkv(B, grid, H, D, Skv=None, dtype=torch.float32, amp=None, seed=0):
    """Queries with structure: a per-channel constant plus token noise of amplitude ``amp[channel]``.

    By default channel blocks of 16 alternate between nearly static (0.01) and changing (1.0), so every axis has
    blocks a small threshold reuses and blocks it keeps.
    """
    g = torch.Generator().manual_seed(seed)
    S = grid[0] * grid[1] * grid[2]
    if amp is None:
        amp = torch.tensor([0.01 if (c // 16) % 2 == 0 else 1.0 for c in range(D)])
    q = torch.randn(B, 1, H, D, generator=g) + amp * torch.randn(B, S, H, D, generator=g)
    Skv = Skv or S
    k = torch.randn(B, Skv, H, D, generator=g)
    v = torch.randn(B, Skv, H, D, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def dense(q, k, v, scale=None):
    qh, kh, vh = (t.transpose(1, 2).float() for t in (q, k, v))
    s = q.shape[-1] ** -0.5 if scale is None else scale
    out = F.scaled_dot_product_attention(qh, kh, vh, scale=scale).transpose(1, 2)
    lse = torch.logsumexp(qh @ kh.transpose(-1, -2) * s, dim=-1).transpose(1, 2)
    return out, lse


# -------------------------------------------------------------------------------------------- plan geometry


@pytest.mark.parametrize("axis", ["t", "y", "x"])
def test_groups_cover_every_token_once_and_follow_the_axis(axis):
    grid = (5, 3, 7)
    idx = reuse_groups(grid, axis, tile_tokens=4, tiles_per_group=2)
    flat = idx[idx >= 0]
    assert sorted(flat.tolist()) == list(range(5 * 3 * 7))
    stride = {"t": 3 * 7, "y": 7, "x": 1}[axis]
    anchor, follower = idx[:, 0], idx[:, 1]
    both = (anchor >= 0) & (follower >= 0)
    assert both.any()
    assert torch.equal(follower[both] - anchor[both], torch.full_like(follower[both], stride))
    fhw = torch.stack(torch.unravel_index(follower[both].long(), grid))
    ahw = torch.stack(torch.unravel_index(anchor[both].long(), grid))
    d = {"t": 0, "y": 1, "x": 2}[axis]
    assert torch.equal((fhw - ahw)[d], torch.ones_like(fhw[d]))  # neighbours along the axis only
    assert ((fhw - ahw)[[i for i in range(3) if i != d]] == 0).all()


def test_plan_validation_messages():
    q = torch.randn(1, 30, 2, 16)
    with pytest.raises(ValueError, match="q has 30 tokens but grid"):
        channel_reuse_plan(q, (2, 4, 4), 0.1)
    with pytest.raises(ValueError, match="axis must be one of"):
        channel_reuse_plan(q, (2, 3, 5), 0.1, axis="z")
    with pytest.raises(ValueError, match="criterion must be one of"):
        channel_reuse_plan(q, (2, 3, 5), 0.1, criterion="median")
    with pytest.raises(ValueError, match="tiles_per_group must be an int >= 1"):
        channel_reuse_plan(q, (2, 3, 5), 0.1, tiles_per_group=0)


# ------------------------------------------------------------------------------------------ plan semantics


def test_hand_made_example_skips_exactly_the_unchanged_block():
    # grid (2, 4, 4): one group (frame 0 = anchor tile, frame 1 = follower tile, 16 tokens each); D = 32 = 2 blocks.
    # Frame 1 repeats frame 0 in channels 0-15 and moves far away in channels 16-31.
    g = torch.Generator().manual_seed(0)
    f0 = torch.randn(1, 16, 2, 32, generator=g)
    f1 = f0.clone()
    f1[..., 16:] += 3.0
    q = torch.cat([f0, f1], dim=1)
    k, v = torch.randn(2, 1, 40, 2, 32, generator=g)
    plan = channel_reuse_plan(q, (2, 4, 4), theta=0.01, tile_tokens=16, tiles_per_group=2, criterion="max")
    assert plan.tile_index.shape == (1, 2, 16)
    assert plan.reuse.tolist() == [[[[True, False]], [[True, False]]]]  # [B, H, G, NC]
    assert float(plan.saved_fraction) == pytest.approx(16 * 16 / (32 * 32))  # 16 follower tokens x 16 channels
    # The reused block is identical, so the reuse is exact: every backend equals dense attention.
    ref_out, ref_lse = dense(q, k, v)
    has_triton = dispatch.triton_interpret() and dispatch.package_available("triton")
    backends = ["naive", "sdpa"] + (["triton"] if has_triton else [])
    for backend in backends:
        out, lse = K.channel_reuse_attention(q, k, v, plan, backend=backend)
        assert_close(f"hand-made {backend}", ref_out, out, 1e-5)
        torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=0)


def test_theta_zero_is_dense_and_saves_nothing():
    q, k, v = video_qkv(2, (4, 4, 4), 2, 32)
    plan = channel_reuse_plan(q, (4, 4, 4), 0.0, tile_tokens=16, tiles_per_group=2)
    assert not plan.reuse.any() and float(plan.saved_fraction) == 0.0
    assert torch.equal(apply_reuse(q, plan), q)


@pytest.mark.parametrize("criterion", ["mean", "max"])
def test_saved_fraction_is_monotone_in_theta(criterion):
    # noise amplitude rising over the 8 channel blocks: each threshold step reuses one more block
    amp = torch.logspace(-2, 0, 8).repeat_interleave(16)
    q, _, _ = video_qkv(1, (8, 4, 4), 2, 128, amp=amp)
    thetas = [0.0, 0.01, 0.03, 0.06, 0.1, 0.2, 0.5, 10.0]
    saved = [float(channel_reuse_plan(q, (8, 4, 4), t, tile_tokens=16, tiles_per_group=4,
                                      criterion=criterion).saved_fraction) for t in thetas]
    assert saved == sorted(saved), saved
    assert saved[0] == 0.0 and 0.0 < saved[3] < saved[-1]
    assert saved[-1] == pytest.approx(3 / 4)  # everything a follower can reuse: (T - 1) / T


def test_max_criterion_reuses_a_subset_of_mean():
    q, _, _ = video_qkv(2, (4, 4, 4), 3, 32, amp=torch.full((32,), 0.3))
    kw = dict(tile_tokens=16, tiles_per_group=2)
    r_max = channel_reuse_plan(q, (4, 4, 4), 0.2, criterion="max", **kw).reuse
    r_mean = channel_reuse_plan(q, (4, 4, 4), 0.2, criterion="mean", **kw).reuse
    assert (r_max <= r_mean).all() and r_mean.sum() > r_max.sum()


def test_delta_form_equals_substituted_queries():
    """S = S_anchor + ΔQ_kept·K_keptᵀ (what the kernel computes) equals Q̃·Kᵀ (what the references run)."""
    q, k, _ = video_qkv(2, (4, 4, 6), 2, 40, Skv=50)
    plan = channel_reuse_plan(q, (4, 4, 6), 0.05, axis="y", tile_tokens=16, tiles_per_group=2)
    assert 0 < float(plan.saved_fraction) < 0.5
    scores = naive_channel_reuse_scores(q, k, plan, scale=0.2)
    q_eff = apply_reuse(q, plan)
    ref = torch.einsum("bshd,bnhd->bhsn", q_eff, k) * 0.2
    torch.testing.assert_close(scores, ref, atol=1e-5, rtol=1e-5)


def test_reference_backends_agree_and_dispatch_on_cpu():
    q, k, v = video_qkv(1, (4, 4, 4), 2, 32, Skv=70)
    plan = channel_reuse_plan(q, (4, 4, 4), 0.05, tile_tokens=16, tiles_per_group=2)
    ref_out, ref_lse = naive_channel_reuse_attention(q, k, v, plan)
    out, lse = K.channel_reuse_attention(q, k, v, plan)  # auto on CPU = sdpa
    assert_close("sdpa vs naive", ref_out, out, 1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="Make the plan from this q"):
        K.channel_reuse_attention(q[:, :, :1], k[:, :, :1], v[:, :, :1], plan)


def test_triton_rejects_plans_outside_its_shape_rules(monkeypatch):
    q, k, v = video_qkv(1, (2, 4, 6), 2, 32)
    plan = channel_reuse_plan(q, (2, 4, 6), 0.1, tile_tokens=24, tiles_per_group=2)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if dispatch.package_available("triton"):
        with pytest.raises(K.BackendUnavailableError, match="needs tile_tokens a power of 2 >= 16; got 24"):
            K.channel_reuse_attention(q, k, v, plan, backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(K.BackendUnavailableError, match="backend='triton' needs a CUDA device"):
        K.channel_reuse_attention(q, k, v, plan, backend="triton")


# -------------------------------------------------------------------------------------------- triton kernel

CASES = [  # (B, grid, H, D, Skv, axis, tile_tokens, tiles_per_group, theta, criterion)
    pytest.param(1, (4, 4, 4), 2, 32, None, "t", 16, 2, 0.05, "mean", id="B1-g4x4x4-H2-D32-t-16x2"),
    pytest.param(2, (5, 3, 7), 1, 40, 50, "t", 16, 4, 0.05, "max", id="B2-g5x3x7-H1-D40-Skv50-t-16x4-ragged"),
    pytest.param(1, (3, 4, 6), 2, 64, None, "y", 16, 2, 0.08, "mean", id="B1-g3x4x6-H2-D64-y-16x2"),
    pytest.param(1, (2, 3, 16), 1, 16, 33, "x", 16, 2, 0.05, "mean", id="B1-g2x3x16-H1-D16-Skv33-x-16x2"),
]


@needs_interpreted_triton
@pytest.mark.parametrize("B,grid,H,D,Skv,axis,tt,tg,theta,crit", CASES)
def test_triton_matches_reference(B, grid, H, D, Skv, axis, tt, tg, theta, crit):
    q, k, v = video_qkv(B, grid, H, D, Skv=Skv)
    plan = channel_reuse_plan(q, grid, theta, axis=axis, tile_tokens=tt, tiles_per_group=tg, criterion=crit)
    saved = float(plan.saved_fraction)
    assert 0.0 < saved <= (tg - 1) / tg, saved  # the case really reuses something
    out, lse = K.channel_reuse_attention(q, k, v, plan, backend="triton")
    ref_out, ref_lse = naive_channel_reuse_attention(q, k, v, plan)
    tag = f"grid={grid} D={D} axis={axis} saved={saved:.2f}"
    assert_close(f"triton vs naive {tag}", ref_out, out, RATIO[torch.float32])
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=0, msg=lambda m: f"lse {tag}: {m}")
    # and the reuse changes the result (so the comparison above is not trivially dense = dense)
    dense_out, _ = dense(q, k, v)
    assert (dense_out - out.float()).abs().max() > 1e-4


@needs_interpreted_triton
def test_triton_theta_zero_equals_dense():
    q, k, v = video_qkv(2, (4, 4, 4), 2, 32, Skv=45)
    plan = channel_reuse_plan(q, (4, 4, 4), 0.0, tile_tokens=16, tiles_per_group=4)
    out, lse = K.channel_reuse_attention(q, k, v, plan, backend="triton", scale=0.25)
    ref_out, ref_lse = dense(q, k, v, scale=0.25)
    assert_close("theta=0 vs dense", ref_out, out, 1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=0)


@needs_interpreted_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_triton_half_precision(dtype):
    q, k, v = video_qkv(1, (4, 4, 4), 2, 32, dtype=dtype)
    plan = channel_reuse_plan(q, (4, 4, 4), 0.05, tile_tokens=16, tiles_per_group=2)
    assert float(plan.saved_fraction) > 0
    out, lse = K.channel_reuse_attention(q, k, v, plan, backend="triton")
    ref_out, ref_lse = naive_channel_reuse_attention(q, k, v, plan)
    assert out.dtype == dtype
    assert_close(f"triton {dtype}", ref_out, out, RATIO[dtype])
    torch.testing.assert_close(lse, ref_lse, atol=LSE_ATOL[dtype], rtol=0)
