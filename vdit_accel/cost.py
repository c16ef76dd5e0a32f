"""FLOP model of a transformer step as a function of the token budget (a *computed* cost, not a timing).

Under token selection everything in a block scales with the budget θ except the key/value projections of
self-attention (keys and values of all tokens are needed) and the text tokens of joint attention. The ideal
speedup of a step is therefore ``1 / (f + (1 - f)·θ)`` with ``f`` the dense fraction computed here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BlockFlops:
    dense: float  # FLOPs that do not shrink with θ
    scalable: float  # FLOPs at θ = 1 that shrink linearly with θ

    def at(self, budget: float) -> float:
        return self.dense + self.scalable * budget

    @property
    def dense_fraction(self) -> float:
        return self.dense / (self.dense + self.scalable)


def block_flops(transformer, num_video: int, num_text: int = 0) -> BlockFlops:
    """Multiply-add FLOPs (×2) of one block for ``num_video`` video and ``num_text`` text tokens."""
    cfg = transformer.config
    c = cfg.num_attention_heads * cfg.attention_head_dim
    name = type(transformer).__name__
    n, t = num_video, num_text
    if name.startswith("CogVideoX"):
        ffn = getattr(cfg, "ff_inner_dim", None) or 4 * c
        s = n + t
        dense = 2 * (2 * c * c * s) + t * 2 * (2 * c * c + 2 * s * c + 2 * c * ffn)
        scalable = n * 2 * (2 * c * c + 2 * s * c + 2 * c * ffn)
        return BlockFlops(dense, scalable)
    ffn = getattr(cfg, "ffn_dim", None) or 4 * c
    # self-attention: q,o per query token; k,v for all tokens; QK^T and PV over all n keys
    # cross-attention: q,o per token, k,v on the text once; attention over t text tokens
    dense = 2 * (2 * c * c * n) + 2 * (2 * c * c * t)
    scalable = n * 2 * (2 * c * c + 2 * n * c + 2 * c * c + 2 * t * c + 2 * c * ffn)
    return BlockFlops(dense, scalable)


def ideal_speedup(transformer, num_video: int, budget: float, num_text: int = 0) -> float:
    """Computed (not timed) speedup of the blocks at ``budget`` against dense."""
    f = block_flops(transformer, num_video, num_text)
    return f.at(1.0) / f.at(budget)
