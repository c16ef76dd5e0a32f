"""Per-step token budgets: presets, speedup targets, and JSON schedule files.

A budget θ ∈ [0, 1] is the fraction of video tokens each block recomputes at one denoising step; θ = 1 is dense.
A :class:`BudgetSchedule` either holds explicit per-step budgets (its length must equal ``num_inference_steps``)
or a rule (a base budget or a target speedup) that resolves to budgets for any step count.

>>> from vdit_accel import BudgetSchedule
>>> BudgetSchedule.default().resolve(10)
[1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 1.0]
>>> BudgetSchedule([1.0, 0.5, 0.5, 1.0]).save("my_schedule.json")      # doctest: +SKIP
>>> pipe.enable_acceleration(schedule="my_schedule.json")              # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

SCHEDULE_FORMAT_VERSION = 1

# Fraction of a block's work that does not shrink with the budget when nothing better is known (the key/value
# projections of self-attention). `vdit_accel.cost.dense_fraction` computes it from a model's FLOP count.
DEFAULT_DENSE_FRACTION = 0.05


def dense_warmup_steps(num_steps: int, fraction: float = 0.2) -> int:
    """How many leading steps a default schedule keeps dense: 20 % of the steps, at least one."""
    return max(1, int(round(fraction * num_steps)))


def step_cost(budget: float, dense_fraction: float = DEFAULT_DENSE_FRACTION) -> float:
    """Predicted cost of one step at ``budget`` relative to a dense step (linear model)."""
    return dense_fraction + (1.0 - dense_fraction) * budget


def predicted_speedup(budgets: Sequence[float], dense_fraction: float = DEFAULT_DENSE_FRACTION) -> float:
    """Predicted (computed, not timed) transformer speedup of a schedule against dense."""
    return len(budgets) / sum(step_cost(b, dense_fraction) for b in budgets)


def _validate_budgets(budgets: Sequence[float], field_name: str = "budgets") -> list[float]:
    if isinstance(budgets, (str, bytes)) or not isinstance(budgets, Sequence):
        raise TypeError(f"`{field_name}` must be a list of floats in [0, 1], got {type(budgets).__name__}.")
    if len(budgets) == 0:
        raise ValueError(f"`{field_name}` is empty; give one budget per denoising step, e.g. [1.0, 0.5, 0.5, 1.0].")
    out = []
    for i, b in enumerate(budgets):
        if isinstance(b, bool) or not isinstance(b, (int, float)) or math.isnan(float(b)):
            raise TypeError(f"`{field_name}[{i}]` must be a number in [0, 1], got {b!r}.")
        if not 0.0 <= float(b) <= 1.0:
            raise ValueError(
                f"`{field_name}[{i}]` = {b} is outside [0, 1]. A budget is the fraction of video tokens recomputed "
                f"at that step (1.0 = dense); clip it into [0, 1]."
            )
        out.append(float(b))
    return out


@dataclass
class BudgetSchedule:
    """Per-step token budgets.

    Args:
        budgets (`list[float]`, *optional*):
            One budget per denoising step. When given, the schedule only fits runs with exactly that many steps.
        budget (`float`, defaults to 0.5):
            For a rule schedule (no ``budgets``): the budget of the non-dense steps. Lower is faster and less
            faithful; 0.4-0.7 is the useful range.
        dense_first (`int`, *optional*):
            For a rule schedule: number of leading dense steps (default: 20 % of the steps, at least 1). Early steps
            lay out the video and are the most sensitive.
        dense_last (`bool`, defaults to True):
            For a rule schedule: keep the last step dense (it sets the fine detail).
        speedup (`float`, *optional*):
            For a rule schedule: a target transformer speedup; ``budget`` is then derived with the linear cost model.
        metadata (`dict`):
            Free-form provenance (model, resolution, frames, steps, target, fitness, versions) written to JSON files.
    """

    budgets: list[float] | None = None
    budget: float = 0.5
    dense_first: int | None = None
    dense_last: bool = True
    speedup: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.budgets is not None:
            self.budgets = _validate_budgets(self.budgets)
        if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)) or not 0 < self.budget <= 1:
            raise ValueError(f"`budget` must be in (0, 1], got {self.budget!r}. Use 1.0 for dense.")
        if self.dense_first is not None and (not isinstance(self.dense_first, int) or self.dense_first < 0):
            raise ValueError(f"`dense_first` must be a non-negative int, got {self.dense_first!r}.")
        if self.speedup is not None:
            if isinstance(self.speedup, bool) or not isinstance(self.speedup, (int, float)) or self.speedup < 1:
                raise ValueError(
                    f"`speedup` must be a number >= 1.0 (1.0 = dense), got {self.speedup!r}. For example speedup=2.0."
                )
        if not isinstance(self.metadata, dict):
            raise TypeError(f"`metadata` must be a dict, got {type(self.metadata).__name__}.")

    # ------------------------------------------------------------------------------------------------ constructors
    @classmethod
    def default(cls) -> "BudgetSchedule":
        """Dense first 20 % of the steps and the last step, budget 0.5 in between; fits any step count."""
        return cls()

    @classmethod
    def dense(cls) -> "BudgetSchedule":
        """Budget 1.0 at every step (the dense model, through the accelerated code path)."""
        return cls(budget=1.0, dense_first=0, dense_last=False)

    @classmethod
    def uniform(cls, budget: float, dense_first: int = 0, dense_last: bool = False) -> "BudgetSchedule":
        """The same budget at every step (optionally with dense first/last steps)."""
        return cls(budget=budget, dense_first=dense_first, dense_last=dense_last)

    @classmethod
    def for_speedup(cls, speedup: float, dense_first: int | None = None, dense_last: bool = True) -> "BudgetSchedule":
        """A rule schedule aiming at a predicted transformer ``speedup`` (dense warm-up and last step kept)."""
        return cls(speedup=speedup, dense_first=dense_first, dense_last=dense_last)

    @classmethod
    def from_any(cls, obj: "BudgetSchedule | Sequence[float] | str | os.PathLike | dict") -> "BudgetSchedule":
        """Accept a schedule object, a list of budgets, a JSON path, or a dict as written by :meth:`to_dict`."""
        if isinstance(obj, BudgetSchedule):
            return obj
        if isinstance(obj, (str, os.PathLike)):
            return cls.load(obj)
        if isinstance(obj, dict):
            return cls.from_dict(obj)
        if isinstance(obj, Sequence):
            return cls(budgets=list(obj))
        raise TypeError(
            f"`schedule` must be a BudgetSchedule, a list of per-step budgets, a path to a schedule JSON file, or a "
            f"dict; got {type(obj).__name__}."
        )

    # ------------------------------------------------------------------------------------------------ resolution
    def resolve(self, num_steps: int, dense_fraction: float = DEFAULT_DENSE_FRACTION) -> list[float]:
        """Budgets for a run of ``num_steps`` steps; raises if an explicit schedule has another length."""
        if self.budgets is not None:
            if len(self.budgets) != num_steps:
                where = f" (from {self.metadata['source']})" if "source" in self.metadata else ""
                raise ValueError(
                    f"The budget schedule{where} has {len(self.budgets)} steps but the pipeline runs "
                    f"num_inference_steps={num_steps}. Call the pipeline with num_inference_steps={len(self.budgets)}, "
                    f"or pass a schedule made for {num_steps} steps (e.g. `vdit-accel search --steps {num_steps}`)."
                )
            return list(self.budgets)
        n_first = dense_warmup_steps(num_steps) if self.dense_first is None else self.dense_first
        n_first = min(n_first, num_steps)
        n_last = 1 if (self.dense_last and num_steps - n_first >= 1) else 0
        n_mid = num_steps - n_first - n_last
        budget = self.budget
        if self.speedup is not None:
            budget = self._budget_for_speedup(num_steps, n_first, n_last, dense_fraction)
            if budget is None:  # too few sparse steps: shrink the dense warm-up until the target fits
                while n_first > 0 and budget is None:
                    n_first -= 1
                    n_mid += 1
                    budget = self._budget_for_speedup(num_steps, n_first, n_last, dense_fraction)
                if budget is None:
                    best = predicted_speedup([1.0] * n_last + [0.05] * (num_steps - n_last), dense_fraction)
                    raise ValueError(
                        f"`speedup`={self.speedup} is not reachable in {num_steps} steps with a dense last step "
                        f"(the most this cost model predicts is about {best:.2f}x). Ask for a lower speedup or more steps."
                    )
        return [1.0] * n_first + [budget] * n_mid + [1.0] * n_last

    def _budget_for_speedup(self, n: int, n_first: int, n_last: int, f: float) -> float | None:
        n_mid = n - n_first - n_last
        if n_mid <= 0:
            return None if self.speedup > 1.0 else 1.0
        mid_cost = (n / self.speedup - n_first - n_last) / n_mid
        budget = (mid_cost - f) / (1.0 - f)
        if budget < 0.05:
            return None
        return min(1.0, round(budget, 4))

    # ------------------------------------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["format_version"] = SCHEDULE_FORMAT_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str | None = None) -> "BudgetSchedule":
        where = f" in {source}" if source else ""
        if not isinstance(d, dict):
            raise ValueError(f"Corrupt schedule{where}: expected a JSON object, got {type(d).__name__}.")
        version = d.get("format_version", SCHEDULE_FORMAT_VERSION)
        if version != SCHEDULE_FORMAT_VERSION:
            raise ValueError(f"Schedule{where} has format_version={version}; this vdit-accel reads version "
                             f"{SCHEDULE_FORMAT_VERSION}. Re-run `vdit-accel search` to regenerate it.")
        known = {"budgets", "budget", "dense_first", "dense_last", "speedup", "metadata"}
        unknown = set(d) - known - {"format_version"}
        if unknown:
            raise ValueError(f"Corrupt schedule{where}: unknown field(s) {sorted(unknown)}; expected {sorted(known)}.")
        kwargs = {k: d[k] for k in known if k in d}
        kwargs["metadata"] = dict(kwargs.get("metadata") or {})
        if source:
            kwargs["metadata"].setdefault("source", source)
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"Corrupt schedule{where}: {e}") from e

    def save(self, path: str | os.PathLike) -> None:
        meta = {k: v for k, v in self.metadata.items() if k != "source"}
        d = {**self.to_dict(), "metadata": meta}
        with open(path, "w") as f:
            json.dump(d, f, indent=2)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BudgetSchedule":
        path = os.fspath(path)
        if os.path.isdir(path):
            raise ValueError(f"Schedule path {path!r} is a folder, not a file. Pass the JSON file inside it written by "
                             f"`BudgetSchedule.save` or `vdit-accel search --out` (e.g. {path}/schedule.json).")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Schedule file not found: {path!r}. Pass an existing JSON file written by "
                                    f"`BudgetSchedule.save` or `vdit-accel search --out`.")
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"Corrupt schedule file {path!r}: not valid JSON ({e}). Regenerate it with "
                             f"`vdit-accel search` or write it with `BudgetSchedule.save`.") from e
        return cls.from_dict(d, source=path)

    def check_matches(self, **run: Any) -> None:
        """Raise if recorded metadata (model, height, width, num_frames) disagrees with the run's values."""
        for key, value in run.items():
            recorded = self.metadata.get(key)
            if recorded is not None and value is not None and recorded != value:
                src = self.metadata.get("source", "the schedule")
                raise ValueError(
                    f"{src} was searched for {key}={recorded!r} but this run uses {key}={value!r}. Use a schedule "
                    f"searched for this setting (`vdit-accel search`), or pass `BudgetSchedule(budgets=...)` "
                    f"without metadata to apply it anyway."
                )
