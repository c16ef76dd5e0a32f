"""The emulation: per-axis similarity masks, reuse sources (chains resolved to their root), substitution.

Semantics in :mod:`vdit_accel.methods.score_reuse`.
"""

from __future__ import annotations

import torch

from .config import AXES, PRIORITY, ReuseConfig


def channel_groups(adapter, transformer: torch.nn.Module) -> tuple[tuple[str, int, int], ...]:
    """RoPE channel groups of one head as ``(name, start, stop)``: ``t``, ``h``, ``w`` from the adapter's
    ``rope_groups_fn`` (channels in that order), or one group ``"all"`` for models without 3-D RoPE."""
    head_dim = getattr(transformer.config, "attention_head_dim", None)
    if not isinstance(head_dim, int):
        raise ValueError(f"{type(transformer).__name__}.config has no integer `attention_head_dim`; score reuse "
                         f"needs the head size to map RoPE channel groups.")
    sizes = adapter.rope_groups_fn(transformer)
    if sizes is None:
        return (("all", 0, head_dim),)
    if sum(sizes) != head_dim:
        raise ValueError(f"adapter {adapter.name!r} declares RoPE groups {tuple(sizes)} that do not add up to "
                         f"attention_head_dim={head_dim}; fix its rope_groups_fn.")
    out, start = [], 0
    for name, n in zip(("t", "h", "w"), sizes):
        out.append((name, start, start + n))
        start += n
    return tuple(out)


def axis_masks(x: torch.Tensor, grid: tuple[int, int, int], theta: float, axes=AXES, scale: torch.Tensor | None = None,
               present: torch.Tensor | None = None, groups=None) -> dict[str, torch.Tensor]:
    """Per-axis pass masks ``{axis: bool [B, N, H, D]}``: ``|x − x_prev| / 2 < θ·scale``.

    ``x`` ``[B, N, H, D]`` holds the video tokens in raster order of ``grid``; ``scale`` broadcasts to
    ``[B, 1, H, D]`` (``None``: 1); ``present`` ``[B, N]`` marks rows that exist (token selection): both the entry
    and its predecessor must be present. ``groups`` (``(name, start, stop)``) makes the decision per group (all
    channels of the group must pass)."""
    b, n, h, d = x.shape
    f, hh, ww = grid
    xg = x.float().reshape(b, f, hh, ww, h, d)
    thr = theta * (scale.float().reshape(b, 1, 1, 1, h, d) if scale is not None else torch.ones((), device=x.device))
    pg = present.reshape(b, f, hh, ww, 1, 1) if present is not None else None
    out = {}
    for ax in axes:
        dim = {"t": 1, "y": 2, "x": 3}[ax]
        m = torch.zeros(b, f, hh, ww, h, d, dtype=torch.bool, device=x.device)
        cur = xg.narrow(dim, 1, xg.shape[dim] - 1)
        prev = xg.narrow(dim, 0, xg.shape[dim] - 1)
        ok = (cur - prev).abs() / 2 < thr
        if pg is not None:
            ok = ok & pg.narrow(dim, 1, pg.shape[dim] - 1) & pg.narrow(dim, 0, pg.shape[dim] - 1)
        m.narrow(dim, 1, xg.shape[dim] - 1).copy_(ok)
        if groups is not None:
            for _, s, e in groups:
                m[..., s:e] = m[..., s:e].all(dim=-1, keepdim=True)
        out[ax] = m.reshape(b, n, h, d)
    return out


def reuse_sources(masks: dict[str, torch.Tensor], grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(reused bool [B, N, H, D], root long [B, N, H, D])``: the OR of the axis masks and, per entry, the token
    whose computed value it ends up with (neighbour by priority t, y, x; chains followed to their root)."""
    any_mask = next(iter(masks.values()))
    b, n, h, d = any_mask.shape
    step = {"t": grid[1] * grid[2], "y": grid[2], "x": 1}
    src = torch.arange(n, device=any_mask.device).view(1, n, 1, 1).expand(b, n, h, d).clone()
    reused = torch.zeros_like(any_mask)
    for ax in PRIORITY:
        if ax in masks:
            pick = masks[ax] & ~reused
            src = torch.where(pick, src - step[ax], src)
            reused |= pick
    for _ in range(max(1, n).bit_length() + 1):  # pointer jumping: sources point strictly backwards in raster order
        nxt = torch.gather(src, 1, src)
        if torch.equal(nxt, src):
            break
        src = nxt
    return reused, src


def channel_std(x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """Per-(batch, head, channel) std ``[B, 1, H, D]`` (fp32) of ``x`` ``[B, N, H, D]`` over the present rows."""
    xf = x.float()
    if present is None:
        return xf.std(dim=1, unbiased=False, keepdim=True)
    w = present.float()[:, :, None, None]
    cnt = w.sum(dim=1, keepdim=True).clamp_min(1)
    mean = (xf * w).sum(dim=1, keepdim=True) / cnt
    return (((xf - mean) ** 2 * w).sum(dim=1, keepdim=True) / cnt).sqrt()


def emulate_side(x: torch.Tensor, grid, theta: float, config: ReuseConfig, index: torch.Tensor | None = None,
                 groups=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Substitute reused entries of one side. ``x`` ``[B, R, H, D]`` are the video rows present (all ``N`` when
    ``index`` is None, else the rows ``index`` ``[B, R]``). Returns ``(x̃ [B, R, H, D], reused bool [B, R, H, D])``."""
    b, r, h, d = x.shape
    n = grid[0] * grid[1] * grid[2]
    present = None
    if index is not None:
        full = x.new_zeros(b, n, h, d).scatter_(1, index[:, :, None, None].expand(-1, -1, h, d), x)
        present = torch.zeros(b, n, dtype=torch.bool, device=x.device).scatter_(1, index, True)
    else:
        full = x
    scale = channel_std(full, present) if config.normalize else None
    decision_groups = groups if config.granularity == "group" else None
    masks = axis_masks(full, grid, theta, config.axes, scale, present, decision_groups)
    reused, root = reuse_sources(masks, grid)
    out = torch.gather(full, 1, root)
    if index is not None:
        view = index[:, :, None, None].expand(-1, -1, h, d)
        return torch.gather(out, 1, view), torch.gather(reused, 1, view)
    return out, reused
