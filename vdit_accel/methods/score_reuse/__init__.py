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

import weakref
from typing import Any

import torch
from diffusers.hooks import HookRegistry

from ...runtime import AccelRuntime
from ...runtime.handle import get_handle
from ...runtime.processors import ProcessorSwap
from .. import register_method
from ..token_selection import BLOCK_HOOK as TOKEN_SELECTION_BLOCK_HOOK
from .config import AXES, GRANULARITIES, MODES, PRIORITY, ReuseConfig
from .emulation import axis_masks, channel_groups, channel_std, emulate_side, reuse_sources
from .hooks import REUSE_BLOCK_HOOK, KernelReuseAttention, ReuseOnlyBlockHook, ReuseQKTransform
from .stats import EMULATION_NOTE, KERNEL_NOTE, ReuseStats

# the statistics of the last run of a transformer whose reuse was removed, for reuse_summary after disable
_LAST_STATS: "weakref.WeakKeyDictionary[torch.nn.Module, ReuseStats]" = weakref.WeakKeyDictionary()


def _has_token_selection(blocks) -> bool:
    registry = getattr(blocks[0][1], "_diffusers_hook", None)
    return registry is not None and registry.get_hook(TOKEN_SELECTION_BLOCK_HOOK) is not None


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
    swap = ProcessorSwap(transformer, "score-reuse")
    if standalone:
        for block_name, block in blocks:
            HookRegistry.check_if_exists_or_initialize(block).register_hook(
                ReuseOnlyBlockHook(runtime, config, transform, block_name, adapter, heads, groups[-1][2]),
                REUSE_BLOCK_HOOK)
        for block_name, block in blocks:
            swap.install(f"{block_name}.{adapter.self_attention}",
                         adapter.make_processor(getattr(block, adapter.self_attention).processor, runtime))
        runtime.processor_swaps.append(swap)
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
        swap.restore()  # a processor the user set since is kept
        if swap in runtime.processor_swaps:
            runtime.processor_swaps.remove(swap)
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


register_method("reuse", apply_score_reuse)

__all__ = ["AXES", "EMULATION_NOTE", "GRANULARITIES", "KERNEL_NOTE", "MODES", "PRIORITY", "REUSE_BLOCK_HOOK",
           "KernelReuseAttention", "ReuseConfig", "ReuseOnlyBlockHook", "ReuseQKTransform", "ReuseStats",
           "apply_score_reuse", "axis_masks", "channel_groups", "channel_std", "emulate_side", "reuse_sources",
           "reuse_summary"]
