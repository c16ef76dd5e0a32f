"""FLOP model of a transformer step as a function of the token budget (a *computed* cost, not a timing).

Under token selection everything in a block scales with the budget θ except the key/value projections of
self-attention (keys and values of all tokens are needed) and the text tokens of joint attention. The ideal
speedup of a step is therefore ``1 / (f + (1 - f)·θ)`` with ``f`` the dense fraction computed here.
"""

from __future__ import annotations

from .adapters import get_adapter
from .adapters.base import BlockFlops

__all__ = ["BlockFlops", "block_flops", "ideal_speedup"]


def block_flops(transformer, num_video: int, num_text: int = 0) -> BlockFlops:
    """Multiply-add FLOPs (×2) of one block for ``num_video`` video and ``num_text`` text tokens: the FLOP model of
    ``transformer``'s family (its adapter's ``flops``)."""
    return get_adapter(transformer).flops(transformer.config, num_video, num_text)


def ideal_speedup(transformer, num_video: int, budget: float, num_text: int = 0) -> float:
    """Computed (not timed) speedup of the blocks at ``budget`` against dense."""
    f = block_flops(transformer, num_video, num_text)
    return f.at(1.0) / f.at(budget)
