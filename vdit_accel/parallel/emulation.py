"""Single-process emulation of per-rank token selection: the reference that context-parallel runs are compared with
(each rank selects within its own contiguous shard of the video tokens)."""

from __future__ import annotations

from typing import Callable

import torch

from ..runtime.handle import get_handle, transformers_of


class _ShardState:
    """A view of a ``BlockCacheState`` restricted to one contiguous shard of the video tokens."""

    def __init__(self, state, sl: slice):
        self.last_input = state.last_input[:, sl]
        self.lse = state.lse[:, sl]
        self.n_skip = state.n_skip[:, sl]


def sharded_selector(shards: int) -> Callable:
    """A token selector that selects within each of ``shards`` contiguous shards of the video tokens with the same
    count ``ceil(θ·N/shards)``: what each rank of a ``shards``-way context-parallel run selects, in one process."""
    from ..methods.token_selection import select_tokens

    def select(state, x, budget, cfg):
        n = x.shape[1]
        if n % shards:
            raise ValueError(f"{n} video tokens cannot be split into {shards} equal shards.")
        local = n // shards
        parts = []
        for s in range(shards):
            sl = slice(s * local, (s + 1) * local)
            idx = select_tokens(_ShardState(state, sl), x[:, sl], budget, cfg)
            if idx is None:
                idx = torch.arange(local, device=x.device).expand(x.shape[0], -1)
            parts.append(idx + s * local)
        index = torch.cat(parts, dim=1)
        return None if index.shape[1] == n else index

    select._vdit_accel_shards = shards
    return select


def emulate_rank_selection(pipe_or_transformer, shards: int) -> None:
    """Make an accelerated single-process pipeline select tokens per shard as a ``shards``-rank context-parallel run
    does (the same per-rank budgets), so the two outputs can be compared. ``shards=1`` restores the global top-k."""
    modules = ([pipe_or_transformer] if isinstance(pipe_or_transformer, torch.nn.Module)
               else [m for _, m in transformers_of(pipe_or_transformer)])
    for m in modules:
        handle = get_handle(m)
        if handle is None:
            raise ValueError("Acceleration is not enabled; call `enable_acceleration` first.")
        if shards == 1:
            handle.runtime.extras.pop("select_tokens", None)
        else:
            handle.runtime.extras["select_tokens"] = sharded_selector(shards)
