"""Cost of a budget schedule: the time of a transformer step as a function of its budget θ.

A :class:`CostModel` is a monotone piecewise-linear curve ``cost(θ)`` relative to one step of the *un-accelerated*
transformer (so ``1 / mean(cost)`` is the transformer speedup against plain dense). It is either

* **calibrated** (:func:`calibrate`): the accelerated transformer is timed on this machine at a few budgets, on the
  search's own inputs (resolution, frames, prompt length), the median of several interleaved rounds is kept, and
  the curve is made monotone. Overheads (scoring, top-k, gather/scatter, element-wise work on all rows) are in it.
* **flops** (:meth:`CostModel.from_flops`): the computed FLOP model of :mod:`vdit_accel.cost`,
  ``f + (1 − f)·θ``; deterministic, machine-independent (reproducible tests).

The first transformer call of each CFG branch in a run is always dense (nothing is cached yet), so
:meth:`CostModel.schedule_cost` charges step 0 as θ = 1 whatever its budget says.

>>> cm = CostModel(budgets=[0.0, 1.0], costs=[0.1, 1.0], source="example")
>>> round(cm.speedup([1.0, 0.5, 0.5, 0.5]), 3)
1.481
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass
class CostModel:
    """Relative step cost at measured budgets; linear interpolation between them.

    Args:
        budgets (`list[float]`): budgets at which the cost is known, ascending (must include 1.0).
        costs (`list[float]`): step time at each budget divided by the plain dense step time.
        source (`str`): ``"calibrated"``, ``"flops"`` or a free-form note.
        details (`dict`): provenance (machine, device, raw times in seconds, repeats).
    """

    budgets: list[float]
    costs: list[float]
    source: str = "calibrated"
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if len(self.budgets) != len(self.costs) or len(self.budgets) < 2:
            raise ValueError(f"CostModel needs >= 2 (budget, cost) points of equal length, got {len(self.budgets)} "
                             f"budgets and {len(self.costs)} costs.")
        order = np.argsort(self.budgets)
        b = np.asarray(self.budgets, dtype=float)[order]
        c = np.asarray(self.costs, dtype=float)[order]
        if b[-1] != 1.0 or b[0] < 0.0:
            raise ValueError(f"CostModel budgets must lie in [0, 1] and include 1.0, got {self.budgets}.")
        if not np.all(c > 0):
            raise ValueError(f"CostModel costs must be positive, got {self.costs}.")
        # time can only grow with the budget; a non-monotone measurement is noise (and would break the repair)
        c = _isotonic(c)
        self.budgets, self.costs = [float(x) for x in b], [float(x) for x in c]

    # ----------------------------------------------------------------------------------------------------- queries
    def step_cost(self, budget: float) -> float:
        return float(np.interp(budget, self.budgets, self.costs))

    def schedule_cost(self, budgets: Sequence[float]) -> float:
        """Mean step cost of a schedule relative to a plain dense step (step 0 always runs dense)."""
        eff = [1.0] + list(budgets[1:])
        return sum(self.step_cost(b) for b in eff) / len(eff)

    def speedup(self, budgets: Sequence[float]) -> float:
        """Predicted transformer speedup of a schedule against the plain dense transformer."""
        return 1.0 / self.schedule_cost(budgets)

    def max_speedup(self, num_steps: int, min_budget: float) -> float:
        return self.speedup([1.0] + [min_budget] * (num_steps - 1))

    # ----------------------------------------------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CostModel":
        try:
            return cls(budgets=list(d["budgets"]), costs=list(d["costs"]), source=d.get("source", "file"),
                       details=dict(d.get("details") or {}))
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
    def from_flops(cls, transformer, num_video: int, num_text: int = 0) -> "CostModel":
        """The computed FLOP model ``f + (1 − f)·θ`` of :func:`vdit_accel.cost.block_flops`."""
        from ..cost import block_flops

        f = block_flops(transformer, num_video, num_text).dense_fraction
        return cls(budgets=[0.0, 1.0], costs=[f, 1.0], source="flops",
                   details=dict(dense_fraction=f, num_video=num_video, num_text=num_text))


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


def calibrate(transformer, inputs: dict[str, Any], budgets: Sequence[float] = (0.1, 0.25, 0.5, 0.75, 1.0),
              rounds: int = 5, calls_per_round: int = 3, token_selection=None) -> CostModel:
    """Time the transformer on this machine at each budget; returns the calibrated :class:`CostModel`.

    Args:
        transformer: the pipeline's transformer (not accelerated).
        inputs: keyword arguments of one transformer call (``hidden_states``, ``timestep``,
            ``encoder_hidden_states``, ...), as the pipeline passes them.
        budgets: where to measure; 1.0 is added if missing. The search's lowest budget should be among them.
        rounds: interleaved rounds (each budget once per round); the median over rounds is kept, which is robust to
            other load on the machine.
        calls_per_round: timed sparse calls per round and budget (after one dense call that fills the caches).
        token_selection (`TokenSelectionConfig`, *optional*): the settings the schedule will run with.
    """
    import torch

    from ..api import accelerate_transformer, set_step
    from ..config import AccelerationConfig, TokenSelectionConfig
    from ..schedule import BudgetSchedule

    budgets = sorted(set(float(b) for b in budgets) | {1.0})
    ts = token_selection or TokenSelectionConfig()
    device = next(transformer.parameters()).device

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def call():
        with transformer.cache_context("cond"):
            transformer(**inputs, return_dict=False)

    def time_plain() -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(calls_per_round):
            call()
        sync()
        return (time.perf_counter() - t0) / calls_per_round

    def time_budget(b: float) -> float:
        n = calls_per_round + 1
        sched = BudgetSchedule(budgets=[1.0] + [b] * calls_per_round)
        handle = accelerate_transformer(transformer, AccelerationConfig(schedule=sched, token_selection=ts), sched)
        try:
            set_step(transformer, 0, n)
            call()  # dense: fills the block caches
            sync()
            t0 = time.perf_counter()
            for j in range(1, n):
                set_step(transformer, j, n)
                call()
            sync()
            return (time.perf_counter() - t0) / calls_per_round
        finally:
            handle.remove()

    raw: dict[str, list[float]] = {"plain": []}
    raw.update({str(b): [] for b in budgets})
    with torch.no_grad():
        call()  # warm-up (allocator, lazy init)
        for _ in range(rounds):
            raw["plain"].append(time_plain())
            for b in budgets:
                raw[str(b)].append(time_budget(b))
    plain = statistics.median(raw["plain"])
    costs = [statistics.median(raw[str(b)]) / plain for b in budgets]
    import platform

    details = dict(plain_step_seconds=plain, raw_seconds=raw, rounds=rounds, calls_per_round=calls_per_round,
                   device=str(device), machine=platform.machine(), processor=platform.processor() or "",
                   torch_threads=torch.get_num_threads(), raw_costs=costs)
    if device.type == "cuda":
        details["gpu"] = torch.cuda.get_device_name(device)
    return CostModel(budgets=budgets, costs=costs, source="calibrated", details=details)
