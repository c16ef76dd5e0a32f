"""Searched schedules shipped with the package, used by ``enable_acceleration()`` for the bundled model.

``vdit_accel/assets/schedules/<model>.json`` holds a schedule found by ``vdit-accel search`` for the bundled tiny
model at its default settings (:data:`vdit_accel.tiny_model.DEFAULT_GENERATION_KWARGS`). Its budgets are explicit
for the default step count. For another step count the searched curve is **resampled**: step 0 stays dense, the
other budgets are linearly interpolated in normalised time (t = i / (n − 1)), so the shape of the searched curve and
about the same mean budget are kept. Other models get ``None`` (run-time ``auto`` decisions apply).

*Checks.* A schedule file records what it was made for (``model``, ``grid``, ``steps``, ...). ``enable_acceleration``
checks the model (:func:`check_schedule_for_pipe`) and the step tracker checks the latent grid and step count at the
first call of each new setting (:func:`check_schedule_for_run`); a mismatch raises ``ValueError``. The shipped default
(:class:`ShippedSchedule`) is chosen by model and adapts to any step count and size, so only its model is checked.
Override: ``enable_acceleration(schedule=..., check_schedule=False)``, or a schedule without metadata.

This module belongs to the core (``enable_acceleration`` uses it); it imports neither DEAP, the search engine nor
the bundled model's code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .schedule import BudgetSchedule

BUNDLED_MODEL_ID = "vdit-accel/tiny-shapes-t2v"
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
BUNDLED_MODEL_DIR = ASSETS_DIR / "tiny-shapes-t2v"  # the same folder as vdit_accel.tiny_model.DEFAULT_MODEL_DIR
SCHEDULES_DIR = ASSETS_DIR / "schedules"
SHIPPED_FILES = {BUNDLED_MODEL_ID: "tiny-shapes-t2v.json"}


def pipeline_identity(pipe) -> str | None:
    """A stable name for the model of a pipeline: :data:`BUNDLED_MODEL_ID` for the bundled model (wherever the
    package is installed), else the ``name_or_path`` that ``from_pretrained`` recorded (hub id or folder), else
    ``None`` (a pipeline built in memory)."""
    candidates = [getattr(pipe, "name_or_path", None), _cfg(pipe, "_name_or_path")]
    tr = getattr(pipe, "transformer", None)
    if tr is not None:
        candidates.append(_cfg(tr, "_name_or_path"))
    bundled = os.path.realpath(BUNDLED_MODEL_DIR)
    for c in candidates:
        if isinstance(c, str) and c:
            real = os.path.realpath(c) if os.path.exists(c) else None
            if real is not None and (real == bundled or real.startswith(bundled + os.sep)):
                return BUNDLED_MODEL_ID
    for c in candidates[:2]:
        if isinstance(c, str) and c:
            return c
    return None


def _cfg(obj, key: str):
    cfg = getattr(obj, "config", None)
    if cfg is None:
        return None
    try:
        return cfg.get(key) if hasattr(cfg, "get") else getattr(cfg, key, None)
    except Exception:  # noqa: BLE001 - a config without the key
        return None


def check_schedule_for_pipe(schedule: BudgetSchedule, pipe=None, grid=None) -> None:
    """Raise a clear ``ValueError`` when a searched schedule's metadata names another model (``pipe``) or another
    latent token grid ``(F', H', W')`` than the run's. Unrecorded values are not checked, nor is the model of a
    pipeline built in memory (it has no recorded identity).

    ``enable_acceleration`` calls it with the pipeline; the step tracker calls :func:`check_schedule_for_run` with
    ``runtime.grid`` at the first call of each setting.
    """
    run = {}
    if pipe is not None:
        run["model"] = pipeline_identity(pipe)
    if grid is not None:
        run["grid"] = [int(g) for g in grid]
    schedule.check_matches(**run)


def check_schedule_for_run(schedule: BudgetSchedule, grid: Sequence[int] | None = None,
                           num_steps: int | None = None) -> None:
    """Raise a clear ``ValueError`` when a schedule file was made for another latent grid (resolution, frames) or
    step count than this call's. The shipped default (:class:`ShippedSchedule`) adapts to both and is not checked;
    the step count of explicit budgets is checked by :meth:`BudgetSchedule.resolve` (its message says more).

    Args:
        schedule (`BudgetSchedule`): the schedule in use; its ``metadata`` says what it was made for.
        grid (`tuple[int, int, int]`, *optional*): the call's latent token grid ``(F', H', W')``.
        num_steps (`int`, *optional*): the call's ``num_inference_steps``.
    """
    if isinstance(schedule, ShippedSchedule):
        return
    run: dict[str, Any] = {}
    if grid is not None:
        run["grid"] = [int(g) for g in grid]
    if num_steps is not None and schedule.budgets is None:  # explicit budgets: resolve() names the step mismatch
        run["steps"] = int(num_steps)
    try:
        schedule.check_matches(**run)
    except ValueError as e:
        raise ValueError(f"{e} To skip this check, pass `check_schedule=False` to `enable_acceleration`.") from None


def resample_budgets(budgets: list[float], num_steps: int) -> list[float]:
    """Resample a schedule to ``num_steps`` steps: step 0 dense, linear interpolation in normalised time."""
    if num_steps == len(budgets):
        return list(budgets)
    if num_steps == 1:
        return [1.0]
    src = np.linspace(0.0, 1.0, len(budgets))
    dst = np.linspace(0.0, 1.0, num_steps)
    out = [float(round(x, 4)) for x in np.interp(dst, src, np.asarray(budgets, dtype=float))]
    out[0] = 1.0
    return out


@dataclass
class ShippedSchedule(BudgetSchedule):
    """A searched schedule: exact for the step count it was searched for, resampled for any other.

    Args:
        searched (`list[float]`): the searched budgets (one per step of ``metadata["steps"]``).
    """

    searched: list[float] = field(default_factory=list)

    def __post_init__(self):
        super().__post_init__()
        if not self.searched:
            raise ValueError("ShippedSchedule needs the searched budgets (`searched`).")
        BudgetSchedule(budgets=self.searched)  # same validation as explicit budgets

    def resolve(self, num_steps: int, cost=None) -> list[float]:
        return resample_budgets(self.searched, num_steps)

    def to_dict(self) -> dict[str, Any]:  # saves as an ordinary explicit schedule file
        return BudgetSchedule(budgets=list(self.searched), metadata=dict(self.metadata)).to_dict()


def shipped_schedule_path(model_id: str) -> Path | None:
    name = SHIPPED_FILES.get(model_id)
    if name is None:
        return None
    path = SCHEDULES_DIR / name
    return path if path.is_file() else None


def shipped_schedule_for(pipe) -> BudgetSchedule | None:
    """The shipped searched schedule for ``pipe``'s model, or ``None`` when there is none."""
    model_id = pipeline_identity(pipe)
    path = shipped_schedule_path(model_id) if model_id else None
    if path is None:
        return None
    sched = BudgetSchedule.load(path)
    if sched.budgets is None:  # a rule (e.g. a speedup target): it resolves for any step count itself
        return sched
    return ShippedSchedule(searched=list(sched.budgets), metadata=dict(sched.metadata))
