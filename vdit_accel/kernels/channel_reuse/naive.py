r"""Channel-block reuse attention (the kernel path of TimeRipple): the plan and the pure-PyTorch reference.

Definition
----------
Queries ``q`` ``[B, S, H, D]`` are the video tokens of a latent grid ``(F, Hh, Ww)`` in raster order
(``s = (f * Hh + y) * Ww + x``); keys and values ``[B, Skv, H, D]`` may be any sequence (e.g. video + text).

*Tiles and groups.* Move the reuse ``axis`` (``"t"``, ``"y"`` or ``"x"``) to the front of the grid, giving a
``[A, R]`` matrix of token ids (``R`` = the other two axes in raster order). A *tile* is ``tile_tokens`` (BM)
consecutive entries of one row of that matrix; a *group* is ``tiles_per_group`` (T) tiles at the same ``R``
positions in consecutive rows ``a, a+1, …, a+T-1``. So with ``axis="t"`` the tiles of a group are the same spatial
patch in T consecutive frames, and token ``m`` of tile ``t`` is the neighbour along the axis of token ``m`` of tile
``t-1``. Edges (``A % T``, ``R % BM``) give shorter groups/tiles, padded with ``-1`` in ``tile_index``
``[G, T, BM]``. Tile 0 of a group is its *anchor*, the others are *followers*.

*Decision*, per (batch, head, group, channel block ``c`` of ``block_channels`` channels): with
``d = |q_follower - q_anchor| / 2`` over the group's valid follower tokens and the block's channels (half the
absolute difference: TimeRipple's window-2 standard deviation, so ``θ`` has the same units as its schedule),

* ``criterion="mean"``: reuse iff ``mean(d) < θ``;  ``criterion="max"``: reuse iff ``max(d) < θ`` (then every
  reused entry is within ``2θ`` of the value it stands for).

``θ <= 0`` never reuses (strict ``<``), so ``θ = 0`` is exactly dense attention.

*Scores.* Row ``i`` (tile ``t`` of group ``g``, position ``m``) of the score matrix is

.. math::  S_i = \sum_{c\ \text{kept}} q_{i,c} K_c^\top + \sum_{c\ \text{reused}} q_{a(i),c} K_c^\top
           = S_{a(i)} + \Delta Q_{i,\text{kept}} K_{\text{kept}}^\top,\qquad \Delta Q_i = q_i - q_{a(i)},

with ``a(i)`` the anchor token at position ``m``; anchors keep every block. Equivalently ``S = \tilde Q K^\top``
with ``\tilde Q`` = ``q`` whose follower rows take the anchor's values in reused blocks (:func:`apply_reuse`).
Then ``out = softmax(scale * S) V`` and ``lse = logsumexp(scale * S)`` as usual. The Triton kernel evaluates the
first form: the reused blocks of the T-1 follower tiles are never multiplied (the anchor's partial product is
computed once and broadcast), which is the saving; :func:`naive_channel_reuse_scores` evaluates the second form
literally, and :func:`naive_channel_reuse_attention` the ``\tilde Q`` form. All three agree to rounding.

*Saved fraction*: the share of query-side partial products ``q_{i,ch} k_{j,ch}`` (per key, over all
``B·H·S·D`` (token, channel) entries) that are not computed: ``Σ reused blocks × valid follower tokens × block
width / (B·H·S·D)``. At most ``(T-1)/T``. Reuse here is on the query side only (keys are never reused).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..query_sparse.naive import naive_query_sparse_attention, sdpa_query_sparse_attention

AXES = ("t", "y", "x")
CRITERIA = ("mean", "max")


@dataclass(frozen=True)
class ChannelReusePlan:
    """Which channel blocks of which token groups reuse their anchor's partial scores (see the module docstring).

    Attributes:
        grid: latent token grid ``(F, Hh, Ww)``.
        axis, theta, criterion, block_channels, tile_tokens, tiles_per_group: the settings that made the plan.
        head_dim: ``D`` of the queries the plan was made for.
        tile_index: ``[G, T, BM]`` int32 token ids of each group's tiles (tile 0 = anchor), ``-1`` = padding.
        reuse: ``[B, H, G, NC]`` bool, True where the followers' channel block reuses the anchor's partial scores.
        saved_fraction: 0-d float32 tensor, the fraction of query-side partial products not computed (reading it
            with ``float(...)`` synchronises a GPU).
    """

    grid: tuple[int, int, int]
    axis: str
    theta: float
    criterion: str
    block_channels: int
    tile_tokens: int
    tiles_per_group: int
    head_dim: int
    tile_index: torch.Tensor
    reuse: torch.Tensor
    saved_fraction: torch.Tensor

    @property
    def num_groups(self) -> int:
        return self.tile_index.shape[0]

    @property
    def num_channel_blocks(self) -> int:
        return math.ceil(self.head_dim / self.block_channels)


def _check_grid(grid) -> tuple[int, int, int]:
    if len(tuple(grid)) != 3 or any(int(n) < 1 for n in grid):
        raise ValueError(f"grid must be (frames, height, width) token counts >= 1; got {grid!r}")
    return tuple(int(n) for n in grid)  # type: ignore[return-value]


@functools.lru_cache(maxsize=64)
def _reuse_groups_cached(grid: tuple[int, int, int], axis: str, bm: int, t: int, device: str) -> torch.Tensor:
    ids = torch.arange(grid[0] * grid[1] * grid[2], dtype=torch.int32).view(grid)
    perm = {"t": (0, 1, 2), "y": (1, 0, 2), "x": (2, 0, 1)}[axis]
    mat = ids.permute(perm).reshape(grid[perm[0]], -1)  # [A, R], neighbours along the axis are consecutive rows
    a, r = mat.shape
    mat = F.pad(mat, (0, (-r) % bm, 0, (-a) % t), value=-1)
    a2, r2 = mat.shape
    groups = mat.view(a2 // t, t, r2 // bm, bm).permute(0, 2, 1, 3).reshape(-1, t, bm)
    return groups.contiguous().to(device)


def reuse_groups(grid, axis: str = "t", tile_tokens: int = 32, tiles_per_group: int = 4,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Token ids ``[G, T, BM]`` (int32, ``-1`` = padding) of the reuse groups of ``grid``; tile 0 is the anchor."""
    grid = _check_grid(grid)
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}; got {axis!r}")
    for name, val in (("tile_tokens", tile_tokens), ("tiles_per_group", tiles_per_group)):
        if not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be an int >= 1; got {val!r}")
    return _reuse_groups_cached(grid, axis, tile_tokens, tiles_per_group, str(torch.device(device)))


def channel_reuse_plan(
    q: torch.Tensor,
    grid,
    theta: float,
    *,
    axis: str = "t",
    block_channels: int = 16,
    tile_tokens: int = 32,
    tiles_per_group: int = 4,
    criterion: str = "mean",
) -> ChannelReusePlan:
    """Decide, per (batch, head, group, channel block), whether the followers reuse the anchor's partial scores.

    Args:
        q: post-RoPE queries ``[B, S, H, D]`` with ``S = F * Hh * Ww`` (video tokens only).
        grid: ``(F, Hh, Ww)``.
        theta: threshold on ``|Δq| / 2`` (see the module docstring). Higher reuses more: faster, less exact;
            ``0`` reproduces dense attention.
        axis: neighbour axis of the tiles in a group: ``"t"`` (same patch in consecutive frames), ``"y"`` or ``"x"``.
        block_channels: channels per reuse decision (16 = one tensor-core k-step; the kernel needs a power of 2 >= 16).
        tile_tokens: tokens per tile (kernel: power of 2 >= 16). Larger tiles decide more coarsely.
        tiles_per_group: tiles sharing one anchor (kernel: power of 2). The saved fraction is at most ``(T-1)/T``;
            more tiles per group reach further from the anchor.
        criterion: ``"mean"`` or ``"max"`` of ``|Δq| / 2`` over the block (``"max"`` is the conservative bound).

    Returns:
        A :class:`ChannelReusePlan` (its ``reuse`` mask and ``saved_fraction`` live on ``q.device``).
    """
    if q.dim() != 4:
        raise ValueError(f"q must be [B, S, H, D]; got shape {tuple(q.shape)}")
    grid = _check_grid(grid)
    B, S, H, D = q.shape
    if S != grid[0] * grid[1] * grid[2]:
        raise ValueError(f"q has {S} tokens but grid {grid} has {grid[0] * grid[1] * grid[2]}; pass the video "
                         "tokens only")
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}; got {criterion!r}")
    if not isinstance(block_channels, int) or block_channels < 1:
        raise ValueError(f"block_channels must be an int >= 1; got {block_channels!r}")
    theta = float(theta)
    if math.isnan(theta):
        raise ValueError("theta must be a number; got NaN")
    tile_index = reuse_groups(grid, axis, tile_tokens, tiles_per_group, q.device)
    G, T, BM = tile_index.shape
    NC = math.ceil(D / block_channels)
    valid = tile_index >= 0  # [G, T, BM]
    n_follow = valid[:, 1:].sum(dim=(1, 2)).float()  # [G]
    width = (D - torch.arange(NC, device=q.device) * block_channels).clamp(max=block_channels).float()  # [NC]
    if T == 1 or theta <= 0:
        reuse = torch.zeros(B, H, G, NC, dtype=torch.bool, device=q.device)
    else:
        safe = tile_index.clamp_min(0).long().flatten()
        qg = q.index_select(1, safe).view(B, G, T, BM, H, D)
        diff = (qg[:, :, 1:].float() - qg[:, :, :1].float()).abs_().mul_(0.5)  # [B, G, T-1, BM, H, D]
        diff.mul_(valid[None, :, 1:, :, None, None])
        diff = F.pad(diff, (0, NC * block_channels - D)).view(B, G, T - 1, BM, H, NC, block_channels)
        if criterion == "max":
            stat = diff.amax(dim=(2, 3, 6))  # [B, G, H, NC]
        else:
            stat = diff.sum(dim=(2, 3, 6)) / (n_follow[:, None, None] * width[None, None, :]).clamp_min(1)
        reuse = (stat < theta) & (n_follow > 0)[None, :, None, None]
        reuse = reuse.permute(0, 2, 1, 3).contiguous()  # [B, H, G, NC]
    saved = (reuse.float() * n_follow[None, None, :, None] * width).sum() / max(B * H * S * D, 1)
    return ChannelReusePlan(grid, axis, theta, criterion, block_channels, BM, T, D, tile_index, reuse, saved)


def _pow2(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def check_plan_for_triton(plan: ChannelReusePlan) -> tuple[bool, str]:
    """The Triton kernel's shape rules: tiles of a power of 2 >= 16 tokens, power-of-2 groups, blocks >= 16."""
    if not (_pow2(plan.tile_tokens) and plan.tile_tokens >= 16):
        return False, f"needs tile_tokens a power of 2 >= 16; got {plan.tile_tokens}"
    if not _pow2(plan.tiles_per_group):
        return False, f"needs tiles_per_group a power of 2; got {plan.tiles_per_group}"
    if not (_pow2(plan.block_channels) and plan.block_channels >= 16):
        return False, f"needs block_channels a power of 2 >= 16; got {plan.block_channels}"
    return True, ""


def _followers(plan: ChannelReusePlan):
    idx = plan.tile_index.long()
    G, T, BM = idx.shape
    is_f = (idx >= 0) & (torch.arange(T, device=idx.device) >= 1)[None, :, None]
    tok = idx[is_f]
    anchor = idx[:, :1, :].expand(G, T, BM)[is_f]
    group = torch.arange(G, device=idx.device)[:, None, None].expand(G, T, BM)[is_f]
    return tok, anchor, group


def _reuse_mask(plan: ChannelReusePlan, group: torch.Tensor) -> torch.Tensor:
    """``[B, n, H, D]`` bool: follower ``n``'s channel reuses its anchor."""
    m = plan.reuse[:, :, group, :]  # [B, H, n, NC]
    m = m.repeat_interleave(plan.block_channels, dim=-1)[..., : plan.head_dim]
    return m.permute(0, 2, 1, 3)


def apply_reuse(q: torch.Tensor, plan: ChannelReusePlan) -> torch.Tensor:
    """``Q̃``: ``q`` with each follower's reused channel blocks replaced by its anchor's values ``[B, S, H, D]``."""
    tok, anchor, group = _followers(plan)
    q_eff = q.clone()
    q_eff[:, tok] = torch.where(_reuse_mask(plan, group), q[:, anchor], q[:, tok])
    return q_eff


def naive_channel_reuse_scores(q: torch.Tensor, k: torch.Tensor, plan: ChannelReusePlan,
                               scale: float | None = None) -> torch.Tensor:
    """Scaled scores ``[B, H, S, Skv]`` (fp32) in the delta form ``S_i = S_anchor + ΔQ_kept · K_keptᵀ``.

    A literal, unoptimised statement of what the kernel computes; equal to ``apply_reuse(q) · Kᵀ`` up to rounding.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qf, kf = q.float(), k.float()
    scores = torch.einsum("bshd,bnhd->bhsn", qf, kf)  # anchors (and, for now, followers) with every block
    tok, anchor, group = _followers(plan)
    delta = qf[:, tok] - qf[:, anchor]  # [B, n, H, D]
    delta = torch.where(_reuse_mask(plan, group), torch.zeros_like(delta), delta)  # ΔQ of kept blocks only
    scores[:, :, tok] = scores[:, :, anchor] + torch.einsum("bshd,bnhd->bhsn", delta, kf)
    return scores * scale


def naive_channel_reuse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: ChannelReusePlan,
                                  scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference ``(out [B, S, H, D] q.dtype, lse [B, S, H] fp32)`` of softmax(scale·Q̃Kᵀ)V; materialises S."""
    return naive_query_sparse_attention(apply_reuse(q, plan), k, v, None, scale)


def sdpa_channel_reuse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: ChannelReusePlan,
                                 scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Same result on PyTorch's fused attention (the CPU path): Q̃ then one dense call; nothing is saved."""
    return sdpa_query_sparse_attention(apply_reuse(q, plan), k, v, None, scale)
