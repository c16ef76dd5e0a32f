"""Hooks of score reuse: the Q/K transform (emulation), the reuse-only block hook, the kernel-mode attention."""

from __future__ import annotations

import torch
from diffusers.hooks import ModelHook
from diffusers.hooks._helpers import TransformerBlockRegistry

from ...runtime import AccelRuntime, Selection
from .config import ReuseConfig
from .emulation import channel_std, emulate_side
from .stats import ReuseStats

REUSE_BLOCK_HOOK = "vdit_accel_score_reuse"


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
        from ...kernels import channel_reuse_attention, channel_reuse_plan

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
