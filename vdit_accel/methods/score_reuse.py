r"""Channel-level attention-score reuse (TimeRipple, arXiv 2511.12035): an **emulation**, plus a kernel mode.

The default ``mode="emulate"`` reproduces the *quality effect* of TimeRipple exactly and counts what it would save.
It saves no time by itself: reused entries are substituted and dense attention runs on the substituted Q̃/K̃. Turning
the saving into wall-clock time is the job of the kernel (``vdit_accel/kernels/channel_reuse``; ``mode="kernel"``,
below).

Semantics (per self-attention call, on post-RoPE ``q``/``k`` ``[B, S, H, D]``)
-----------------------------------------------------------------------------
*Grid.* Video tokens are in raster order of the latent grid ``(F', H', W')`` (``runtime.grid``):
``n = (f·H' + y)·W' + x``. Axis ``"t"`` compares a token with the token one frame earlier, ``"y"`` one row up,
``"x"`` one column left. The first token along an axis has no predecessor and never passes on that axis.
Text rows of joint attention (CogVideoX, HunyuanVideo, Mochi) are never reused. Only self-attention is touched.

*Similarity test* (window 2), per (batch, head, token, channel) entry ``a`` and each axis in ``ReuseConfig.axes``:
``|a − a_prev| / 2 < θ · σ``. ``|a − a_prev| / 2`` is the standard deviation of the two-token window (the paper's
Δ with K = 2). ``σ`` is the per-(batch, head, channel) standard deviation of that tensor (Q or K) over the call's
video tokens (for Q under token selection: the selected ones) when ``normalize=True`` (default), so θ means the
same on every model whatever the scale of its Q/K; ``σ = 1`` with ``normalize=False`` (θ in raw units, like the
paper's schedule, whose units are not published). The test is strict, so ``θ = 0`` never reuses; such steps take
a shortcut and are exactly dense.

*Reuse mask.* OR over the axes. With ``granularity="group"`` an axis passes for a (token, RoPE group) only if every
channel of the group passes (one decision per group, the shape a channel-block kernel wants).

*Substitution.* A reused entry takes its neighbour's *effective* value: priority ``t``, then ``y``, then ``x``
among the passing axes, and the neighbour's own entry may itself be reused, so chains resolve to the root entry
that is really computed (``q̃[n] = q̃[prev(n)]``, evaluated in raster order). This is what copying partial scores
gives: the copied partial score of a copied entry is the root's. Attention is then the usual dense
``softmax(Q̃K̃ᵀ·scale)·V`` through ``runtime.attention_fn``.

*Saved fraction* (what a kernel could skip). In channel ``c`` a reused query entry makes every partial product
``q_ic·k_jc`` of its row a copy, a reused key entry every product of its column; the products still computed are
``nq_c · nk_c`` (rows × columns not reused in channel ``c``, text rows included). So, per call,

``saved_fraction = 1 − Σ_{b,h,c} nq·nk / (B·H·D·Sq·Sk)``  (``Sq``: query rows actually computed)

is the fraction of QKᵀ multiply-adds not computed; ``entry_fraction`` (reused Q and K entries over all Q and K
entries) is reported beside it. Both are stored per step, CFG branch and layer in ``runtime.extras["reuse"]``
(:class:`ReuseStats`) and per RoPE group (:func:`channel_groups`). Only QKᵀ is counted (P·V is unchanged).

*With token selection* (Astraea), ``q`` holds only the selected rows. A query entry is reused only where its
neighbour row is also selected in this call (an unselected row's partial scores are not computed, so there is
nothing to copy); keys cover all rows, so K-side reuse is unrestricted. ``Sq`` in the saved fraction is then the
number of rows actually computed, so the fraction is relative to the work token selection left.

*RoPE groups.* 3-D RoPE splits each head's channels into temporal / height / width groups (the adapter's
``rope_groups_fn``, channel order t, h, w in both Wan and CogVideoX); :func:`channel_groups` exposes them. Reuse
decisions follow them with ``granularity="group"``, and savings are always reported per group.

*Reuse alone* (``token_selection=None``): :func:`apply_score_reuse` installs the adapter's self-attention processor
and a light block hook (:class:`ReuseOnlyBlockHook`) that publishes an all-rows selection on reuse steps only; on
θ = 0 steps (warm-up, last step) the family's own processor runs, so those steps are bit-identical to dense. No
token-selection caches are installed. With token selection on, only the Q/K transform is added.

*Kernel mode* (``mode="kernel"``) hands the video query rows to :func:`vdit_accel.kernels.channel_reuse_attention`
instead: its own, coarser reuse rule (query side only, one axis ``kernel_axis``, tiles of tokens reusing their group
anchor's partial scores per block of channels; ``kernels/channel_reuse/naive.py`` defines it), decided on Q/σ when
``normalize=True``. The threshold schedule and the statistics (same definition, K never reused) are shared. Text
rows, and calls where token selection computes a subset of rows (the kernel needs the whole grid), run the wrapped
attention without reuse and count as dense. Only the kernel's Triton backend (CUDA) saves time.

>>> import vdit_accel
>>> from vdit_accel.methods.score_reuse import ReuseConfig, reuse_summary
>>> pipe = vdit_accel.load_default_pipeline()                               # doctest: +SKIP
>>> pipe.enable_acceleration(reuse=ReuseConfig(theta_max=0.5), token_selection=None)  # doctest: +SKIP
>>> frames = pipe("a red circle moving right on a black background").frames  # doctest: +SKIP
>>> reuse_summary(pipe)["saved_fraction"]                                   # doctest: +SKIP
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks._helpers import TransformerBlockRegistry

from ..runtime import AccelRuntime, Selection
from ..runtime.handle import get_handle
from ..runtime.processors import set_processor

REUSE_BLOCK_HOOK = "vdit_accel_score_reuse"
AXES = ("t", "x", "y")
PRIORITY = ("t", "y", "x")  # which neighbour a reused entry copies when several axes pass
MODES = ("emulate", "kernel")
GRANULARITIES = ("channel", "group")
EMULATION_NOTE = ("emulated: reused Q/K entries are substituted and dense attention runs; the saved fraction is what a "
                  "reuse kernel could skip, no time is saved")
KERNEL_NOTE = ("kernel path (vdit_accel.kernels.channel_reuse_attention, query side only): the saved fraction is what "
               "the Triton kernel skips; on CPU and other backends reused entries are substituted and dense attention "
               "runs, so no time is saved there")
_LAST_STATS: "weakref.WeakKeyDictionary[torch.nn.Module, ReuseStats]" = weakref.WeakKeyDictionary()


def _check_theta(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"`ReuseConfig.{name}` must be a finite number >= 0, got {value!r}. Example: "
                         f"ReuseConfig(theta_min=0.2, theta_max=0.5).")


def _check_step(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"`ReuseConfig.{name}` must be a step index (int >= 0) or None (a default relative to "
                         f"num_inference_steps), got {value!r}.")


@dataclass
class ReuseConfig:
    """Channel-level attention-score reuse (TimeRipple, arXiv 2511.12035); semantics in the module docstring.

    Args:
        theta_min (`float`, defaults to 0.2): threshold at the start of the ramp (step ``i_min``).
        theta_max (`float`, defaults to 0.5): threshold at and after ``i_max``. Higher reuses more entries (more saved,
            less faithful). With ``normalize=True`` θ is in units of the per-channel standard deviation of Q/K.
        i_min, i_max (`int`, *optional*): the ramp θ_min → θ_max runs linearly over steps ``[i_min, i_max]``
            (0-based). Defaults: ``i_min = warmup_steps``, ``i_max = round(0.4·num_steps)`` (the paper's 20 of 50).
        warmup_steps (`int`, *optional*): the first steps are dense. Default ``round(0.2·num_steps)`` (the paper's
            10 of 50). More warm-up is more faithful and saves less.
        dense_last (`bool`, defaults to True): the last step is dense.
        axes (`tuple[str]`, defaults to ``("t", "x", "y")``): neighbour axes tested (OR-ed).
        window (`int`, defaults to 2): similarity window; only 2 (adjacent tokens, the paper's best) is implemented.
        mode (`str`, defaults to ``"emulate"``): ``"emulate"`` substitutes reused entries and runs dense attention
            (exact quality effect, no speedup by itself). ``"kernel"`` runs the video query rows through
            :func:`vdit_accel.kernels.channel_reuse_attention` (its coarser rule; saves time only on its Triton
            backend, on CUDA).
        normalize (`bool`, defaults to True): compare against ``θ·σ`` with σ the per-(batch, head, channel) std of
            Q (resp. K) over the call's video tokens, so θ is model-independent. False: raw units.
        granularity (`str`, defaults to ``"channel"``): ``"channel"`` decides per channel (the paper);
            ``"group"`` decides per RoPE channel group (all of a group's channels must pass).
        reuse_q, reuse_k (`bool`, default True): reuse on the query / key side.
        kernel_axis, block_channels, tile_tokens, tiles_per_group, criterion: ``mode="kernel"`` only, passed to
            :func:`vdit_accel.kernels.channel_reuse_plan` (query side only, one axis, tiles of ``tile_tokens``
            tokens reusing their group anchor's partial scores in blocks of ``block_channels`` channels; see
            ``kernels/channel_reuse/naive.py``). ``axes``, ``granularity`` and ``reuse_k`` do not apply there.
    """

    theta_min: float = 0.2
    theta_max: float = 0.5
    i_min: int | None = None
    i_max: int | None = None
    warmup_steps: int | None = None
    dense_last: bool = True
    axes: tuple[str, ...] = AXES
    window: int = 2
    mode: str = "emulate"
    normalize: bool = True
    granularity: str = "channel"
    reuse_q: bool = True
    reuse_k: bool = True
    kernel_axis: str = "t"
    block_channels: int = 16
    tile_tokens: int = 32
    tiles_per_group: int = 4
    criterion: str = "mean"

    def __post_init__(self):
        _check_theta("theta_min", self.theta_min)
        _check_theta("theta_max", self.theta_max)
        if self.theta_min > self.theta_max:
            raise ValueError(f"`ReuseConfig.theta_min` ({self.theta_min}) must be <= `theta_max` ({self.theta_max}): "
                             f"the threshold ramps up from theta_min to theta_max.")
        for name in ("i_min", "i_max", "warmup_steps"):
            _check_step(name, getattr(self, name))
        if self.i_min is not None and self.i_max is not None and self.i_min > self.i_max:
            raise ValueError(f"`ReuseConfig.i_min` ({self.i_min}) must be <= `i_max` ({self.i_max}).")
        for name in ("dense_last", "normalize", "reuse_q", "reuse_k"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"`ReuseConfig.{name}` must be a bool, got {getattr(self, name)!r}.")
        if not (self.reuse_q or self.reuse_k):
            raise ValueError("`ReuseConfig.reuse_q` and `reuse_k` are both False: nothing would be reused. "
                             "Set at least one to True.")
        axes = (self.axes,) if isinstance(self.axes, str) else tuple(self.axes)
        if not axes or any(a not in AXES for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(f"`ReuseConfig.axes` must be a non-empty subset of {AXES} without repeats, got "
                             f"{self.axes!r}.")
        self.axes = axes
        if self.window != 2 or isinstance(self.window, bool):
            raise ValueError(f"`ReuseConfig.window` must be 2 (adjacent tokens, the paper's best setting; larger "
                             f"windows are not implemented), got {self.window!r}.")
        if self.mode not in MODES:
            raise ValueError(f"`ReuseConfig.mode` must be one of {MODES}, got {self.mode!r}: 'emulate' substitutes "
                             f"reused entries and runs dense attention (exact quality effect, no speedup); 'kernel' "
                             f"runs vdit_accel.kernels.channel_reuse_attention.")
        if self.kernel_axis not in AXES:
            raise ValueError(f"`ReuseConfig.kernel_axis` must be one of {AXES}, got {self.kernel_axis!r}.")
        for name in ("block_channels", "tile_tokens", "tiles_per_group"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`ReuseConfig.{name}` must be an int >= 1, got {value!r} (the Triton kernel wants "
                                 f"powers of 2; block_channels and tile_tokens >= 16).")
        if self.criterion not in ("mean", "max"):
            raise ValueError(f"`ReuseConfig.criterion` must be 'mean' or 'max', got {self.criterion!r}.")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"`ReuseConfig.granularity` must be one of {GRANULARITIES}, got {self.granularity!r}.")

    def resolve_steps(self, num_steps: int) -> tuple[int, int, int]:
        """``(warmup_steps, i_min, i_max)`` for a run of ``num_steps`` steps (defaults filled in)."""
        warmup = self.warmup_steps if self.warmup_steps is not None else round(0.2 * num_steps)
        i_min = self.i_min if self.i_min is not None else warmup
        i_max = self.i_max if self.i_max is not None else max(i_min, round(0.4 * num_steps))
        return warmup, min(i_min, i_max), i_max

    def theta(self, step: int, num_steps: int) -> float:
        """Threshold of step ``step`` (0-based): 0 (dense) in warm-up and on the last step, θ_min up to ``i_min``,
        linear to θ_max at ``i_max``, θ_max after."""
        warmup, i_min, i_max = self.resolve_steps(num_steps)
        if step < warmup or (self.dense_last and step == num_steps - 1):
            return 0.0
        if step >= i_max:
            return float(self.theta_max)
        if step <= i_min:
            return float(self.theta_min)
        return float(self.theta_min + (step - i_min) * (self.theta_max - self.theta_min) / (i_max - i_min))

    def thetas(self, num_steps: int) -> list[float]:
        return [self.theta(i, num_steps) for i in range(num_steps)]


# ------------------------------------------------------------------------------------------------ the emulation
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


# ------------------------------------------------------------------------------------------------ statistics
@dataclass
class ReuseStats:
    """Per (step, CFG context, layer) counts of one run (reset when a new pipeline call starts)."""

    group_names: tuple[str, ...]
    mode: str = "emulate"
    records: list[dict] = field(default_factory=list)
    run_marker: Any = None

    def sync_run(self, runtime: AccelRuntime) -> None:
        marker = runtime.records[0] if runtime.records else None
        if marker is not self.run_marker:
            self.records.clear()
            self.run_marker = marker

    def add(self, runtime: AccelRuntime, block: str, theta: float, products: list[float], saved: list[float],
            q_entries: int, q_reused: int, k_entries: int, k_reused: int) -> None:
        self.sync_run(runtime)
        self.records.append(dict(step=runtime.step, context=runtime.context, block=block, theta=theta,
                                 products=products, saved=saved, q_entries=q_entries, q_reused=q_reused,
                                 k_entries=k_entries, k_reused=k_reused))

    @staticmethod
    def _fold(recs: list[dict], names) -> dict[str, Any]:
        prod = [sum(r["products"][g] for r in recs) for g in range(len(names))]
        saved = [sum(r["saved"][g] for r in recs) for g in range(len(names))]
        qe, qr = sum(r["q_entries"] for r in recs), sum(r["q_reused"] for r in recs)
        ke, kr = sum(r["k_entries"] for r in recs), sum(r["k_reused"] for r in recs)
        return dict(saved_fraction=sum(saved) / max(sum(prod), 1), entry_fraction=(qr + kr) / max(qe + ke, 1),
                    q_fraction=qr / max(qe, 1), k_fraction=kr / max(ke, 1), products=sum(prod),
                    products_saved=sum(saved),
                    groups={n: s / max(p, 1) for n, s, p in zip(names, saved, prod)})

    def summary(self) -> dict[str, Any]:
        """``steps`` (per step, summed over layers and CFG branches), ``layers`` (per layer over the run),
        ``step_layer`` (saved fraction ``[step][layer]``), and run totals; all labelled as emulation."""
        names = self.group_names
        steps = sorted({r["step"] for r in self.records})
        blocks = list(dict.fromkeys(r["block"] for r in self.records))
        per_step = []
        for s in steps:
            recs = [r for r in self.records if r["step"] == s]
            per_step.append(dict(step=s, theta=recs[0]["theta"], **self._fold(recs, names)))
        per_layer = [dict(layer=bl, **self._fold([r for r in self.records if r["block"] == bl], names))
                     for bl in blocks]
        step_layer = [[self._fold([r for r in self.records if r["step"] == s and r["block"] == bl], names)
                       ["saved_fraction"] for bl in blocks] for s in steps]
        reuse_recs = [r for r in self.records if r["theta"] > 0]
        total = self._fold(self.records, names)
        note = EMULATION_NOTE if self.mode == "emulate" else KERNEL_NOTE
        return dict(mode=self.mode, note=note, definition="1 - computed QK^T partial products / dense partial "
                    "products (per channel: rows not reused x columns not reused)", group_names=list(names),
                    saved_fraction=total["saved_fraction"], entry_fraction=total["entry_fraction"],
                    groups=total["groups"],
                    saved_fraction_reuse_steps=self._fold(reuse_recs, names)["saved_fraction"] if reuse_recs else 0.0,
                    steps=per_step, layers=per_layer, layer_names=blocks, step_layer=step_layer)


# ------------------------------------------------------------------------------------------------ hooks
class ReuseQKTransform:
    """The ``runtime.qk_transforms`` entry: substitutes reused Q/K entries of the current call and records counts."""

    def __init__(self, runtime: AccelRuntime, config: ReuseConfig, groups, stats: ReuseStats):
        self.runtime, self.config, self.groups, self.stats = runtime, config, groups, stats

    @torch.compiler.disable
    def __call__(self, processor, sel: Selection, q: torch.Tensor, k: torch.Tensor, video_offset: int = 0):
        rt, cfg = self.runtime, self.config
        theta = cfg.theta(rt.step, rt.num_steps)
        b, sq, h, d = q.shape
        sk, n, kq = k.shape[1], sel.num_video, sel.num_selected
        if theta <= 0:
            self.record_dense(sel.block_name, b, h, d, sq, sk)
            return q, k
        grid = rt.grid
        if grid is None or grid[0] * grid[1] * grid[2] != n:
            raise RuntimeError(f"score reuse: the block has {n} video tokens but the latent grid is {grid}; the "
                               f"adapter's grid_fn does not match this model's token layout.")
        if video_offset + kq > sq or video_offset + n > sk:
            raise RuntimeError(f"score reuse: video rows [{video_offset}, +{n}) do not fit q ({sq} rows) / k ({sk}).")
        q_reused = torch.zeros(b, kq, h, d, dtype=torch.bool, device=q.device)
        k_reused = torch.zeros(b, n, h, d, dtype=torch.bool, device=k.device)
        if cfg.reuse_q:
            qv, q_reused = emulate_side(q[:, video_offset:video_offset + kq], grid, theta, cfg, sel.index, self.groups)
            q = torch.cat([q[:, :video_offset], qv, q[:, video_offset + kq:]], dim=1)
        if cfg.reuse_k:
            kv, k_reused = emulate_side(k[:, video_offset:video_offset + n], grid, theta, cfg, None, self.groups)
            k = torch.cat([k[:, :video_offset], kv, k[:, video_offset + n:]], dim=1)
        nq = sq - q_reused.sum(dim=1)  # [B, H, D] query rows computed per channel (text rows included)
        nk = sk - k_reused.sum(dim=1)
        computed = (nq.double() * nk.double()).sum(dim=(0, 1))  # [D]
        dense = float(b * h * sq * sk)
        products = [dense * (e - s) for _, s, e in self.groups]
        saved = [p - float(computed[s:e].sum()) for p, (_, s, e) in zip(products, self.groups)]
        self.stats.add(rt, sel.block_name, theta, products, saved, b * sq * h * d, int(q_reused.sum()),
                       b * sk * h * d, int(k_reused.sum()))
        return q, k

    def record_dense(self, block: str, b: int, h: int, d: int, sq: int, sk: int) -> None:
        products = [float(b * h * sq * sk * (e - s)) for _, s, e in self.groups]
        self.stats.add(self.runtime, block, 0.0, products, [0.0] * len(products), b * sq * h * d, 0,
                       b * sk * h * d, 0)


class ReuseOnlyBlockHook(ModelHook):
    """Reuse without token selection: publishes an all-rows :class:`Selection` for the block on reuse steps (so the
    adapter's processor runs and applies the transform); on θ = 0 steps it leaves the selection unset, so the
    family's own processor runs and the step is bit-identical to dense. Keeps the step record's counts honest."""

    def __init__(self, runtime: AccelRuntime, config: ReuseConfig, transform: ReuseQKTransform, block_name: str,
                 adapter, heads: int, head_dim: int):
        super().__init__()
        self.runtime, self.config, self.transform, self.block_name = runtime, config, transform, block_name
        self.adapter, self.heads, self.head_dim = adapter, heads, head_dim
        token_wise_of = getattr(adapter, "token_wise_of", None)
        self.token_wise = token_wise_of(block_name) if token_wise_of is not None else adapter.token_wise
        # joint attention ([text, video] rows in self-attention) shows in the per-token submodules' layouts
        self.joint = any(layout != "video" for layout in self.token_wise.values())
        self.metadata = None

    def initialize_hook(self, module):
        self.metadata = TransformerBlockRegistry.get(type(module))
        return module

    def new_forward(self, module, *args, **kwargs):
        rt, md = self.runtime, self.metadata
        x = md._get_parameter_from_args_kwargs(md.hidden_states_argument_name, args, kwargs)
        text_len = 0
        if md.encoder_hidden_states_argument_name:
            enc = md._get_parameter_from_args_kwargs(md.encoder_hidden_states_argument_name, args, kwargs)
            text_len = 0 if enc is None else enc.shape[1]
        b, n = x.shape[:2]
        rec = rt.current
        if rec is not None:
            rec.batch, rec.video_tokens = b, n
            rec.blocks += 1
        for sub in self.token_wise:  # dense: every video row runs cross-attention / FFN
            counter = (self.adapter.counter_of(sub) if hasattr(self.adapter, "counter_of")
                       else "cross_attention_tokens" if "attn" in sub else "ffn_tokens")
            if counter is not None:
                rt.count(counter, b * n)
        theta = self.config.theta(rt.step, rt.num_steps)
        if theta <= 0:
            s = n + (text_len if self.joint else 0)
            self.transform.record_dense(self.block_name, b, self.heads, self.head_dim, s, s)
            rt.count("attention_queries", b * n)
            rt.count("attention_keys", b * n)
            return self.fn_ref.original_forward(*args, **kwargs)
        previous, rt.selection = rt.selection, Selection(num_video=n, text_len=text_len, block_name=self.block_name)
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            rt.selection = previous


class KernelReuseAttention:
    """``mode="kernel"``: wraps ``runtime.attention_fn`` so that the video query rows of self-attention go through
    :func:`vdit_accel.kernels.channel_reuse_attention` (the kernel that turns reuse into time; on CPU its backend
    substitutes and runs dense attention). Text rows and calls with a token subset (token selection with budget < 1,
    which the kernel does not support) use the wrapped attention without reuse and count as dense.

    Its :meth:`mark` is the ``runtime.qk_transforms`` entry: it hands the call's selection and video offset to the
    attention call that follows (the attention seam sees only ``q, k, v``)."""

    def __init__(self, runtime: AccelRuntime, config: ReuseConfig, stats: ReuseStats, dense: ReuseQKTransform,
                 inner):
        self.runtime, self.config, self.stats, self.dense, self.inner = runtime, config, stats, dense, inner
        self.pending = None

    def mark(self, processor, sel: Selection, q: torch.Tensor, k: torch.Tensor, video_offset: int = 0):
        self.pending = (sel, video_offset)
        return q, k

    @torch.compiler.disable
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        from ..kernels import channel_reuse_attention, channel_reuse_plan

        pending, self.pending = self.pending, None
        if pending is None:
            return self.inner(q, k, v)
        sel, off = pending
        rt, cfg = self.runtime, self.config
        theta = cfg.theta(rt.step, rt.num_steps)
        b, sq, h, d = q.shape
        n = sel.num_video
        if theta <= 0 or sel.index is not None:
            self.dense.record_dense(sel.block_name, b, h, d, sq, k.shape[1])
            return self.inner(q, k, v)
        grid = rt.grid
        if grid is None or grid[0] * grid[1] * grid[2] != n or off + n > sq:
            raise RuntimeError(f"score reuse: the block has {n} video tokens (rows {off}..) but the latent grid is "
                               f"{grid}; the adapter's grid_fn does not match this model's token layout.")
        qv = q[:, off:off + n]
        decide = qv.float() / channel_std(qv).clamp_min(1e-12) if cfg.normalize else qv
        plan = channel_reuse_plan(decide, grid, theta, axis=cfg.kernel_axis, block_channels=cfg.block_channels,
                                  tile_tokens=cfg.tile_tokens, tiles_per_group=cfg.tiles_per_group,
                                  criterion=cfg.criterion)
        out, lse = channel_reuse_attention(qv, k, v, plan)
        if sq > n:  # text rows of joint attention: exact, no reuse
            out_t, lse_t = self.inner(torch.cat([q[:, :off], q[:, off + n:]], dim=1), k, v)
            out = torch.cat([out_t[:, :off], out.to(out_t.dtype), out_t[:, off:]], dim=1)
            lse = torch.cat([lse_t[:, :off], lse, lse_t[:, off:]], dim=1)
        n_follow = (plan.tile_index >= 0)[:, 1:].sum(dim=(1, 2)).double()  # [G] follower tokens per group
        per_block = (plan.reuse.double() * n_follow[None, None, :, None]).sum(dim=2)  # [B, H, NC] reused rows
        reused = per_block.repeat_interleave(cfg.block_channels, dim=-1)[..., :d].sum(dim=(0, 1))  # [D]
        sk = k.shape[1]
        products = [float(b * h * sq * sk * (e - s)) for _, s, e in self.dense.groups]
        saved = [float(reused[s:e].sum()) * sk for _, s, e in self.dense.groups]
        self.stats.add(rt, sel.block_name, theta, products, saved, b * sq * h * d, int(reused.sum()),
                       b * sk * h * d, 0)
        return out, lse


def _has_token_selection(blocks) -> bool:
    from .token_selection import BLOCK_HOOK

    registry = getattr(blocks[0][1], "_diffusers_hook", None)
    return registry is not None and registry.get_hook(BLOCK_HOOK) is not None


def apply_score_reuse(transformer: torch.nn.Module, adapter, runtime: AccelRuntime, config: ReuseConfig):
    """Install score reuse on one transformer; returns a zero-argument callable that removes all of it.

    With token selection already installed, only the Q/K transform is added. Alone, the adapter's self-attention
    processor and a light block hook (:class:`ReuseOnlyBlockHook`) are installed too, and removed again."""
    if not isinstance(config, ReuseConfig):
        raise TypeError(f"`reuse` must be a vdit_accel.ReuseConfig, got {type(config).__name__}.")
    blocks = adapter.blocks(transformer)
    if not blocks:
        raise ValueError(f"{type(transformer).__name__} has no blocks in {adapter.block_lists}; nothing to reuse.")
    groups = channel_groups(adapter, transformer)
    heads = getattr(getattr(blocks[0][1], adapter.self_attention), "heads", None)
    if not isinstance(heads, int):
        raise ValueError(f"{adapter.self_attention} of {type(blocks[0][1]).__name__} has no integer `heads`.")
    standalone = not _has_token_selection(blocks)
    stats = ReuseStats(group_names=tuple(g[0] for g in groups), mode=config.mode)
    transform = ReuseQKTransform(runtime, config, groups, stats)
    originals: dict[str, Any] = {}
    if standalone:
        for block_name, block in blocks:
            attn = getattr(block, adapter.self_attention)
            originals[f"{block_name}.{adapter.self_attention}"] = attn.processor
            HookRegistry.check_if_exists_or_initialize(block).register_hook(
                ReuseOnlyBlockHook(runtime, config, transform, block_name, adapter, heads, groups[-1][2]),
                REUSE_BLOCK_HOOK)
        for name, proc in originals.items():
            set_processor(transformer.get_submodule(name), adapter.make_processor(proc, runtime))
    kernel = None
    if config.mode == "kernel":
        kernel = KernelReuseAttention(runtime, config, stats, transform, runtime.attention_fn)
        runtime.attention_fn = kernel
        runtime.qk_transforms.append(kernel.mark)
    else:
        runtime.qk_transforms.append(transform)
    runtime.extras["reuse"] = stats

    def remove() -> None:
        for fn in (transform, kernel.mark if kernel is not None else None):
            if fn is not None and fn in runtime.qk_transforms:
                runtime.qk_transforms.remove(fn)
        if kernel is not None and runtime.attention_fn is kernel:
            runtime.attention_fn = kernel.inner
        for block_name, block in blocks:
            registry = getattr(block, "_diffusers_hook", None)
            if registry is not None and registry.get_hook(REUSE_BLOCK_HOOK) is not None:
                registry.remove_hook(REUSE_BLOCK_HOOK, recurse=False)
        for name, proc in originals.items():
            set_processor(transformer.get_submodule(name), proc)
        runtime.extras.pop("reuse", None)
        _LAST_STATS[transformer] = stats

    return remove


def reuse_summary(pipe_or_transformer, name: str = "transformer") -> dict[str, Any]:
    """Saved fractions (emulation) per step and per layer of the last run: while reuse is enabled, or of the last run
    before ``disable_acceleration()``."""
    module = getattr(pipe_or_transformer, name, pipe_or_transformer)
    handle = get_handle(module)
    stats = handle.runtime.extras.get("reuse") if handle is not None else None
    if stats is None:
        stats = _LAST_STATS.get(module)
    if stats is None:
        raise ValueError("No score-reuse statistics: enable it with `pipe.enable_acceleration(reuse=ReuseConfig())` "
                         "and run the pipeline first.")
    return stats.summary()


__all__ = ["ReuseConfig", "ReuseStats", "apply_score_reuse", "axis_masks", "channel_groups", "channel_std",
           "emulate_side", "reuse_sources", "reuse_summary"]
