"""How many tokens a block recomputes at a budget θ, with the rounding that bounds torch.compile's graphs.

``TokenSelectionConfig.token_buckets = T`` rounds the budget up to a multiple of ``1/T`` before it becomes a count:
``k = ceil(ceil(θ·T)/T · N)``. A run then uses at most ``T`` distinct counts per resolution whatever its schedule,
so a compiled transformer sees at most ``T`` distinct shapes (and, since the rounded budget reaches the block as a
tensor size marked dynamic, torch.compile folds them all into one graph). The default
``T = 20`` keeps the budgets people write (multiples of 0.05: 0.4, 0.5, 0.7, ...) exact and costs at most ``N/20``
extra tokens per block for other budgets. ``token_buckets=None`` is the exact ``ceil(θ·N)``, one compiled graph per
distinct budget.
"""

from __future__ import annotations

import math

import torch


def selected_count(n: int, budget: float, cfg) -> int:
    """Tokens recomputed out of ``n`` at ``budget`` (``n`` means all of them)."""
    if cfg.token_buckets is None:
        return min(n, max(cfg.min_tokens, math.ceil(budget * n - 1e-9)))
    return bucket_count(n, budget_steps(budget, cfg.token_buckets), cfg)


def budget_steps(budget: float, buckets: int) -> int:
    """``ceil(budget · buckets)``: the budget in steps of ``1/buckets``, rounded up (never fewer tokens than asked)."""
    return max(0, math.ceil(budget * buckets - 1e-9))


def bucket_count(n: int, steps: int, cfg) -> int:
    """``ceil(steps/T · n)`` clamped to ``[min_tokens, n]``; integer arithmetic, so it also works on the symbolic
    sizes torch.compile passes for ``steps``."""
    k = (steps * n + cfg.token_buckets - 1) // cfg.token_buckets
    return min(n, max(cfg.min_tokens, k))


def budget_size_hint(budget: float, cfg, previous: torch.Tensor | None = None) -> torch.Tensor | None:
    """An empty ``[steps, 0]`` tensor whose length carries the rounded budget into the block (``None`` with
    ``token_buckets=None``).

    torch.compile specialises on Python numbers read from objects (one graph per budget), but a size marked dynamic
    is a symbol: the first sparse call compiles one graph with a symbolic token count and every later budget reuses
    it (``compile(dynamic=False)`` gives one graph per bucket instead). ``previous`` is returned when it already has
    the right length.
    """
    if cfg.token_buckets is None:
        return None
    steps = budget_steps(budget, cfg.token_buckets)
    if previous is not None and previous.shape[0] == steps:
        return previous
    hint = torch.empty(steps, 0)
    torch._dynamo.maybe_mark_dynamic(hint, 0)
    return hint
