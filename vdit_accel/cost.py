"""The cost model: what a step costs as a function of its budget, for schedules, ``speedup=`` and the search.

:class:`CostModel` is a monotone curve ``cost(θ)`` relative to one plain dense step, plus the cost of a skipped
(budget-0) step. It is either computed (:meth:`CostModel.from_flops`: the FLOP model below plus a per-block
overhead) or calibrated by timing on this machine (``vdit_accel.search.cost_model.calibrate``). The first call of
each CFG branch in a run is always dense (nothing is cached yet), so :meth:`CostModel.schedule_cost` charges step 0 as
θ = 1 whatever its budget says.

FLOP model of a transformer step as a function of the token budget (a *computed* cost, not a timing).

Under token selection everything in a block scales with the budget θ except the key/value projections of
self-attention (keys and values of all tokens are needed) and the text tokens of joint attention. The ideal
speedup of a step is therefore ``1 / (f + (1 - f)·θ)`` with ``f`` the dense fraction computed here.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from .adapters import get_adapter
from .adapters.base import BlockFlops

# Cost of a budget-0 step (no block runs; the transformer's output is forecast): a few element-wise operations on
# the output, measured at about 1 % of a dense step on the bundled model; 2 % leaves margin.
DEFAULT_SKIP_COST = 0.02
# Per-block overhead of a token-selected step as a fraction of a dense step is about this divided by the model width.
SELECTION_OVERHEAD_WIDTH = 64.0

__all__ = ["BlockFlops", "CostModel", "DEFAULT_SKIP_COST", "block_flops", "ideal_speedup"]


def block_flops(transformer, num_video: int, num_text: int = 0) -> BlockFlops:
    """Multiply-add FLOPs (×2) of one block for ``num_video`` video and ``num_text`` text tokens: the FLOP model of
    ``transformer``'s family (its adapter's ``flops``)."""
    return get_adapter(transformer).flops(transformer.config, num_video, num_text)


def ideal_speedup(transformer, num_video: int, budget: float, num_text: int = 0) -> float:
    """Computed (not timed) speedup of the blocks at ``budget`` against dense."""
    f = block_flops(transformer, num_video, num_text)
    return f.at(1.0) / f.at(budget)


@dataclass
class CostModel:
    """Relative step cost at measured budgets; linear interpolation between them.

    Args:
        budgets (`list[float]`): budgets at which the cost is known, ascending (must include 1.0). A point at 0 is
            the limit of a token-selected step as θ → 0, not a skipped step.
        costs (`list[float]`): step time at each budget divided by the plain dense step time.
        skip_cost (`float`): cost of a budget-0 step (no block runs; the output is a forecast).
        source (`str`): ``"calibrated"``, ``"flops"`` or a free-form note.
        details (`dict`): provenance (machine, device, raw times in seconds, repeats).
    """

    budgets: list[float]
    costs: list[float]
    source: str = "calibrated"
    details: dict[str, Any] = field(default_factory=dict)
    skip_cost: float = DEFAULT_SKIP_COST

    def __post_init__(self):
        if len(self.budgets) != len(self.costs) or len(self.budgets) < 2:
            raise ValueError(f"CostModel needs >= 2 (budget, cost) points of equal length, got {len(self.budgets)} "
                             f"budgets and {len(self.costs)} costs.")
        order = np.argsort(self.budgets)
        b = np.asarray(self.budgets, dtype=float)[order]
        c = np.asarray(self.costs, dtype=float)[order]
        if b[-1] != 1.0 or b[0] < 0.0:
            raise ValueError(f"CostModel budgets must lie in [0, 1] and include 1.0, got {self.budgets}.")
        if not np.all(np.isfinite(c)) or not np.all(c > 0):
            raise ValueError(f"CostModel costs must be positive and finite, got {self.costs}.")
        if not (isinstance(self.skip_cost, (int, float)) and 0 <= self.skip_cost < 1 and math.isfinite(self.skip_cost)):
            raise ValueError(f"CostModel skip_cost must be in [0, 1), got {self.skip_cost!r}.")
        # time can only grow with the budget; a non-monotone measurement is noise (and would break the repair)
        c = _isotonic(c)
        self.budgets, self.costs = [float(x) for x in b], [float(x) for x in c]

    # ----------------------------------------------------------------------------------------------------- queries
    def step_cost(self, budget: float) -> float:
        """Cost of one step at ``budget`` relative to a plain dense step (0: a skipped step)."""
        if budget <= 0.0:
            return float(self.skip_cost)
        return float(np.interp(budget, self.budgets, self.costs))

    @property
    def selection_pays(self) -> bool:
        """Whether a token-selected step at θ = 0.5 is predicted clearly cheaper than a dense one (on small or
        narrow models the per-block overhead eats the saving; skipped steps are then the better lever)."""
        return self.step_cost(0.5) < 0.75

    def schedule_cost(self, budgets: Sequence[float]) -> float:
        """Mean step cost of a schedule relative to a plain dense step (step 0 always runs dense)."""
        eff = [1.0] + list(budgets[1:])
        return sum(self.step_cost(b) for b in eff) / len(eff)

    def speedup(self, budgets: Sequence[float]) -> float:
        """Predicted transformer speedup of a schedule against the plain dense transformer."""
        return 1.0 / self.schedule_cost(budgets)

    def max_speedup(self, num_steps: int, min_budget: float = 0.0) -> float:
        return self.speedup([1.0] + [min_budget] * (num_steps - 1))

    # ----------------------------------------------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CostModel":
        try:
            return cls(budgets=list(d["budgets"]), costs=list(d["costs"]), source=d.get("source", "file"),
                       details=dict(d.get("details") or {}), skip_cost=d.get("skip_cost", DEFAULT_SKIP_COST))
        except (KeyError, TypeError) as e:
            raise ValueError(f"Not a cost model: expected keys 'budgets' and 'costs', got {sorted(d)} ({e}).") from e

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CostModel":
        """Read a cost model from a JSON file: either a cost-model dict, or a schedule file written by
        ``vdit-accel search`` (its ``metadata.cost_model``)."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--cost-model: no such file {path!r}. Use 'calibrate', 'flops', or a JSON file "
                                    f"written by `vdit-accel search` (schedule or checkpoint cost model).")
        with open(path) as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"--cost-model {path!r} is not valid JSON: {e}") from e
        meta = d.get("metadata") if isinstance(d, dict) else None
        if isinstance(meta, dict) and "cost_model" in meta:  # a schedule file written by `vdit-accel search`
            d = meta["cost_model"]
        if not isinstance(d, dict):
            raise ValueError(f"--cost-model {path!r}: expected a JSON object, got {type(d).__name__}.")
        cm = cls.from_dict(d)
        cm.details.setdefault("loaded_from", path)
        return cm

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    # ----------------------------------------------------------------------------------------------------- builders
    @classmethod
    def from_flops(cls, transformer, num_video: int, num_text: int = 0,
                   selection_overhead: float | None = None) -> "CostModel":
        """The computed FLOP model plus a per-block overhead: ``min(1, f + (1 − f)·θ + o)`` for a token-selected step,
        1 for a dense step and :data:`DEFAULT_SKIP_COST` for a skipped one.

        ``f`` is the block's dense FLOP fraction (:func:`block_flops`); ``o`` = :data:`SELECTION_OVERHEAD_WIDTH` / width
        is the cost of scoring, top-k, gathers, scatters and full-length element-wise work, which scales with the
        width ``C`` while the matmuls scale with ``C²`` (measured on CPU: about 4 % of a step on the
        Wan2.1-1.3B shape, width 1536, and about half a step on the bundled model, width 128). Pass
        ``selection_overhead=0`` for the pure FLOP model.
        """
        f = block_flops(transformer, num_video, num_text).dense_fraction
        cfg = transformer.config
        width = cfg.num_attention_heads * cfg.attention_head_dim
        o = min(1.0, SELECTION_OVERHEAD_WIDTH / width) if selection_overhead is None else float(selection_overhead)
        grid = [0.0, 0.25, 0.5, 0.75, 0.999, 1.0]
        costs = [min(1.0, f + (1.0 - f) * b + o) for b in grid[:-1]] + [1.0]
        return cls(budgets=grid, costs=costs, source="flops",
                   details=dict(dense_fraction=f, selection_overhead=o, num_video=num_video, num_text=num_text))


def _isotonic(y: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit (pool adjacent violators): noise is averaged out, not propagated."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in y:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, n2 = blocks.pop()
            m1, n1 = blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return np.concatenate([[m] * int(n) for m, n in blocks])
