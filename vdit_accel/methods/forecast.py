"""Per-token Taylor forecasts along the denoising axis: what a token that is not recomputed takes instead.

TaylorSeer (arXiv 2503.06923) forecasts a module's output at a skipped step from finite differences of its last
computed outputs. Here the same idea works per token: every token (row) keeps its own history of the steps at which
it was last computed, so a block can recompute any subset of its tokens and forecast the rest.

The axis is the scheduler's timestep (not the step index), so uneven timestep spacing (flow-matching shift, Karras
sigmas) is handled: a token computed at timesteps ``t1 > t2`` with outputs ``y1, y2`` is forecast at ``t`` as

    first order:   y2 + d1 · (t − t2),           d1 = (y2 − y1) / (t2 − t1)
    second order:  ... + d2 · (t − t2)(t − t1),  d2 = Newton's divided difference of the last three points

A token computed only once is held constant (zeroth order) until its second computation. The extrapolation
distance is capped at ``horizon`` times the token's last computed interval: far beyond its data a polynomial
diverges, and the cap keeps a rarely refreshed token from running away (the token selector refreshes it soon anyway).

>>> import torch
>>> f = TaylorForecast(order=1)
>>> f.update(torch.tensor([[[1.0]]]), 1000.0); f.update(torch.tensor([[[2.0]]]), 900.0)
>>> f.predict(800.0)  # linear in t: exact
tensor([[[3.]]])
"""

from __future__ import annotations

import math

import torch


class TaylorForecast:
    """Finite-difference history of a ``[B, N, C]`` tensor whose rows are updated at their own timesteps.

    Args:
        order (`int`, defaults to 1): 0 reuses the last value, 1 extrapolates linearly, 2 quadratically.
        horizon (`float`, *optional*, defaults to 2.0): cap on ``|t − t_last|`` in units of the row's last
            computed interval; ``None`` leaves extrapolation unbounded.
        dtype (`torch.dtype`, *optional*): storage dtype of the history (e.g. ``torch.bfloat16`` halves the memory);
            forecasts are computed in the dtype of the values passed to :meth:`update`.
    """

    def __init__(self, order: int = 1, horizon: float | None = 2.0, dtype: torch.dtype | None = None):
        self.order = order
        self.horizon = horizon
        self.dtype = dtype
        self.value: torch.Tensor | None = None  # [B, N, C] last computed value of each row
        self.diffs: list[torch.Tensor] = []  # divided differences of order 1..order, each [B, N, C]
        self.times: torch.Tensor | None = None  # [B, N, order + 1] timesteps of each row's last computations (nan: none)

    @property
    def ready(self) -> bool:
        return self.value is not None

    def nbytes(self) -> int:
        tensors = [self.value, self.times, *self.diffs]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def _store(self, x: torch.Tensor) -> torch.Tensor:
        # Always a copy: rows of the stored tensors are later overwritten in place.
        return x.detach().to(self.dtype or x.dtype, copy=True)

    def update(self, y: torch.Tensor, t: float | torch.Tensor, index: torch.Tensor | None = None) -> None:
        """Record ``y`` computed at timestep ``t``: all rows (``index=None``, ``y`` ``[B, N, C]``) or the rows
        ``index`` ``[B, K]`` (``y`` ``[B, K, C]``). ``t`` may be a 0-dim tensor (so ``torch.compile`` does not
        specialise on its value). Updates are out of place: stored tensors are never written into."""
        if self.value is None or index is None:
            if self.value is None or self.order == 0:
                self._reset_all(y, t)
                return
            index = None
        if index is None:
            old_value, old_diffs, old_times = self.value, self.diffs, self.times
        else:
            view = index.unsqueeze(-1)
            old_value = self.value.gather(1, view.expand(-1, -1, self.value.shape[-1]))
            old_diffs = [d.gather(1, view.expand(-1, -1, d.shape[-1])) for d in self.diffs]
            old_times = self.times.gather(1, view.expand(-1, -1, self.times.shape[-1]))
        y_f = y.float()
        new_diffs = []
        prev_level = y_f  # divided difference of order j at the newest point
        old_level = old_value.float()
        for j in range(1, self.order + 1):
            span = (t - old_times[..., j - 1]).unsqueeze(-1)  # t_new − t_{new−j}
            ok = torch.isfinite(span) & (span != 0)  # rows without that much history, or a repeated timestep
            d = torch.where(ok, (prev_level - old_level) / torch.where(ok, span, 1.0), 0.0)
            new_diffs.append(d)
            if j < self.order:
                old_level, prev_level = old_diffs[j - 1].float(), d
        new_times = torch.cat([torch.zeros_like(old_times[..., :1]) + t, old_times[..., :-1]], dim=-1)
        if index is None:
            self.value = self._store(y)
            self.diffs = [self._store(d) for d in new_diffs]
            self.times = new_times
            return
        view = index.unsqueeze(-1)
        self.value = self.value.scatter(1, view.expand(-1, -1, self.value.shape[-1]), y.detach().to(self.value.dtype))
        self.diffs = [store.scatter(1, view.expand(-1, -1, store.shape[-1]), d.to(store.dtype))
                      for store, d in zip(self.diffs, new_diffs)]
        self.times = self.times.scatter(1, view.expand(-1, -1, self.times.shape[-1]), new_times)

    def _reset_all(self, y: torch.Tensor, t: float | torch.Tensor) -> None:
        self.value = self._store(y)
        self.diffs = [self._store(torch.zeros_like(y)) for _ in range(self.order)]
        nan = torch.full((*y.shape[:2], self.order), float("nan"), device=y.device, dtype=torch.float64)
        first = torch.zeros((*y.shape[:2], 1), device=y.device, dtype=torch.float64) + t
        self.times = torch.cat([first, nan], dim=-1)

    def predict(self, t: float | torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Forecast of every row at timestep ``t`` (``[B, N, C]``)."""
        out_dtype = dtype or self.value.dtype
        if self.order == 0:
            return self.value.to(out_dtype, copy=True)
        t_last = self.times[..., 0]
        dt = t - t_last
        if self.horizon is not None:
            interval = (t_last - self.times[..., 1]).abs()
            cap = torch.nan_to_num(interval * self.horizon, nan=0.0)
            dt = torch.minimum(torch.maximum(dt, -cap), cap)
        dt = dt.to(torch.float32).unsqueeze(-1)
        out = self.value.float() + self.diffs[0].float() * dt
        if self.order >= 2:
            dt2 = (t - self.times[..., 1]).nan_to_num(0.0).to(torch.float32).unsqueeze(-1)
            out = out + self.diffs[1].float() * dt * dt2
        return out.to(out_dtype)


class TensorForecast:
    """The same Taylor forecast for one whole tensor computed at every update (the transformer's output at its
    computed steps), with the timesteps kept as Python floats: a handful of tensor ops per step where
    :class:`TaylorForecast`, built for rows updated at their own timesteps, takes a few dozen (on the bundled model
    its bookkeeping cost 4.5 % of a computed call).

    The history is float32 whatever the tensor's dtype (``dtype`` remembers it for the forecasts handed back).

    >>> f = TensorForecast(order=1)
    >>> f.update(torch.tensor([1.0]), 1000.0); f.update(torch.tensor([2.0]), 900.0)
    >>> f.predict(800.0)
    tensor([3.])
    """

    def __init__(self, order: int = 1, horizon: float | None = 2.0):
        self.order = order
        self.horizon = horizon
        self.value: torch.Tensor | None = None  # the last tensor, float32
        self.dtype: torch.dtype | None = None  # the dtype it came in
        self.diffs: list[torch.Tensor] = []  # divided differences of order 1..order at the newest point, float32
        self.times: list[float] = []  # timesteps of the last order + 1 updates, newest first

    @property
    def ready(self) -> bool:
        return self.value is not None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [self.value, *self.diffs] if t is not None)

    def update(self, y: torch.Tensor, t: float, residual: torch.Tensor | None = None) -> None:
        """Record ``y`` computed at timestep ``t``. ``residual``: ``y − value`` in float32, when the caller has it."""
        t = float(t)
        y32 = y.detach().to(torch.float32, copy=True)
        if self.value is None or self.order == 0:
            self.value, self.dtype = y32, y.dtype
            self.diffs = [torch.zeros_like(y32) for _ in range(self.order)]
            self.times = [t]
            return
        new_diffs, level = [], (y32 - self.value) if residual is None else residual  # y_new − y_old, then d_j − d_j'
        for j in range(1, self.order + 1):
            span = t - self.times[j - 1] if len(self.times) >= j else 0.0
            d = level / span if span != 0.0 else torch.zeros_like(y32)  # no such history, or a repeated timestep
            new_diffs.append(d)
            if j < self.order:
                level = d - self.diffs[j - 1]
        self.value, self.dtype, self.diffs = y32, y.dtype, new_diffs
        self.times = [t, *self.times[:self.order]]

    def interval(self) -> float:
        """The timestep interval between the last two updates (0 with one, or when it is not finite)."""
        interval = abs(self.times[0] - self.times[1]) if len(self.times) > 1 else 0.0
        return interval if math.isfinite(interval) else 0.0

    def increment(self, t: float) -> torch.Tensor:
        """``taylor(t) − value`` (float32), the distance capped at ``horizon`` times the last interval."""
        dt = float(t) - self.times[0]
        if self.horizon is not None:
            cap = self.interval() * self.horizon
            dt = min(max(dt, -cap), cap)
        out = self.diffs[0] * dt
        if self.order >= 2:
            dt2 = float(t) - self.times[1] if len(self.times) > 1 else 0.0
            out = out.add_(self.diffs[1], alpha=dt * dt2)
        return out

    def predict(self, t: float, dtype: torch.dtype | None = None, scale: float = 1.0) -> torch.Tensor:
        """``value + scale · (taylor(t) − value)`` in ``dtype`` (default the tensor's own)."""
        out = self.value.clone() if self.order == 0 else self.value + scale * self.increment(t)
        return out.to(dtype or self.dtype)
