"""Calibrating the cost model on this machine: time the accelerated transformer at a few budgets.

The model itself, :class:`vdit_accel.cost.CostModel`, lives in the core: one cost model serves the schedules,
``speedup=`` and the search. Calibration is the search's: it times real calls.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Sequence

from ..cost import CostModel

__all__ = ["CostModel", "calibrate"]


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

    budgets = sorted(set(float(b) for b in budgets if b > 0) | {1.0})  # token budgets; 0 is timed as a skip
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

    raw: dict[str, list[float]] = {"plain": [], "skip": []}
    raw.update({str(b): [] for b in budgets})
    with torch.no_grad():
        call()  # warm-up (allocator, lazy init)
        for _ in range(rounds):
            raw["plain"].append(time_plain())
            raw["skip"].append(time_budget(0.0))
            for b in budgets:
                raw[str(b)].append(time_budget(b))
    plain = statistics.median(raw["plain"])
    costs = [statistics.median(raw[str(b)]) / plain for b in budgets]
    skip_cost = min(0.5, statistics.median(raw["skip"]) / plain)
    import platform

    details = dict(plain_step_seconds=plain, raw_seconds=raw, rounds=rounds, calls_per_round=calls_per_round,
                   device=str(device), machine=platform.machine(), processor=platform.processor() or "",
                   torch_threads=torch.get_num_threads(), raw_costs=costs)
    if device.type == "cuda":
        details["gpu"] = torch.cuda.get_device_name(device)
    return CostModel(budgets=budgets, costs=costs, source="calibrated", details=details, skip_cost=skip_cost)
