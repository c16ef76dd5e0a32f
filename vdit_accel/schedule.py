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
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from .cost import CostModel

SCHEDULE_FORMAT_VERSION = 1

# Fraction of a block's work that does not shrink with the budget when nothing better is known (the key/value
# projections of self-attention). `vdit_accel.cost.CostModel.from_flops` computes it from a model's FLOP count.
DEFAULT_DENSE_FRACTION = 0.05
# A token-selected step below this budget is replaced by a mix of skipped steps and steps at this budget: a token left
# unrefreshed for long drifts, while a skipped step's forecast is refreshed from computed steps on both sides.
MIN_TOKEN_BUDGET = 0.5
# Skipped steps forecast from the two last computed steps: keep at least this many dense steps first.
MIN_DENSE_FIRST_WITH_SKIPS = 2


def dense_warmup_steps(num_steps: int, fraction: float = 0.2) -> int:
    """How many leading steps a default schedule keeps dense: 20 % of the steps, at least one."""
    return max(1, int(round(fraction * num_steps)))


def _cost_model(cost: "CostModel | float | None") -> "CostModel":
    from .cost import CostModel

    if isinstance(cost, CostModel):
        return cost
    f = DEFAULT_DENSE_FRACTION if cost is None else float(cost)
    return CostModel(budgets=[0.0, 1.0], costs=[max(f, 1e-6), 1.0], source="flops", details=dict(dense_fraction=f))


def step_cost(budget: float, cost: "CostModel | float | None" = None) -> float:
    """Predicted cost of one step at ``budget`` relative to a dense step (see :class:`vdit_accel.cost.CostModel`;
    a float is a dense fraction ``f`` of the plain linear model ``f + (1 − f)·θ``)."""
    return _cost_model(cost).step_cost(budget)


def predicted_speedup(budgets: Sequence[float], cost: "CostModel | float | None" = None) -> float:
    """Predicted (computed, not timed) transformer speedup of a schedule against dense; step 0 counts as dense."""
    return _cost_model(cost).speedup(budgets)


def _finite_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _validate_budgets(budgets: Sequence[float], field_name: str = "budgets") -> list[float]:
    if isinstance(budgets, (str, bytes)) or not isinstance(budgets, Sequence):
        raise TypeError(f"`{field_name}` must be a list of floats in [0, 1], got {type(budgets).__name__}.")
    if len(budgets) == 0:
        raise ValueError(f"`{field_name}` is empty; give one budget per denoising step, e.g. [1.0, 0.5, 0.5, 1.0].")
    out = []
    for i, b in enumerate(budgets):
        if not _finite_number(b):
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
        dense_last (`bool`, *optional*):
            For a rule schedule: keep the last step dense. By default (``None``) it is dense in a rule of
            token-selected steps, and planned like any other step in a ``speedup`` plan with skipped steps: the last
            step moves the latent by the smallest interval of the run (σ 0.009 → 0 at 20 steps of the bundled model's
            shifted flow schedule), so its forecast costs little, and the computed step it frees is worth more in the
            middle (PSNR against dense on six development prompts, 20 steps: 11 computed steps 33.2 → 36.6 dB, 9
            computed 26.6 → 29.3 dB; 50 steps: 24 computed 45.0 → 45.0 dB, 19 computed 36.7 → 39.6 dB; worse at
            ``speedup=1.5`` with 30-40 steps, 47-53 → 44-49 dB: docs/schedules.md).
        speedup (`float`, *optional*):
            For a rule schedule: a target transformer speedup; ``budget`` is then derived with the linear cost model.
        skip_steps (`bool`, defaults to True):
            For a ``speedup`` rule: whether the plan may skip whole steps (budget 0: no block runs, the output is a
            forecast). With False every non-dense step is token-selected at one budget.
        run_time (`dict`, *optional*):
            A run-time schedule (``schedule="auto"``, :meth:`auto`): no budgets are planned; each step is computed or
            skipped at run time from the forecast error the run shows (``AutoDecider`` settings).
        metadata (`dict`):
            Free-form provenance (model, resolution, frames, steps, target, fitness, versions) written to JSON files.
    """

    budgets: list[float] | None = None
    budget: float = 0.5
    dense_first: int | None = None
    dense_last: bool | None = None
    speedup: float | None = None
    skip_steps: bool = True
    run_time: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.budgets is not None:
            self.budgets = _validate_budgets(self.budgets)
        if not _finite_number(self.budget) or not 0 < self.budget <= 1:
            raise ValueError(f"`budget` must be in (0, 1], got {self.budget!r}. Use 1.0 for dense.")
        if self.dense_last is not None and not isinstance(self.dense_last, bool):
            raise ValueError(f"`dense_last` must be True, False or None (the default), got {self.dense_last!r}.")
        if self.dense_first is not None and (not isinstance(self.dense_first, int) or self.dense_first < 0):
            raise ValueError(f"`dense_first` must be a non-negative int, got {self.dense_first!r}.")
        if self.speedup is not None:
            if not _finite_number(self.speedup) or self.speedup < 1:
                raise ValueError(
                    f"`speedup` must be a finite number >= 1.0 (1.0 = dense), got {self.speedup!r}. For example "
                    f"speedup=2.0."
                )
            from .cost import DEFAULT_SKIP_COST

            limit = 1.0 / DEFAULT_SKIP_COST
            if self.speedup >= limit:
                raise ValueError(
                    f"`speedup`={self.speedup} is not reachable at any step count: even skipping every step but the "
                    f"dense ones, a skipped step costs about {DEFAULT_SKIP_COST:.0%} of a dense one, so the most is "
                    f"below {limit:.0f}x. Ask for a lower speedup (2-3x is the useful range)."
                )
        if self.run_time is not None:
            if not isinstance(self.run_time, dict):
                raise ValueError(f"`run_time` must be a dict of BudgetSchedule.auto settings "
                                 f"({', '.join(sorted(RUN_TIME_KEYS))}), got {self.run_time!r}.")
            unknown = set(self.run_time) - RUN_TIME_KEYS
            if unknown:
                raise ValueError(f"`BudgetSchedule.auto` got unknown setting(s) {sorted(unknown)}; the settings are "
                                 f"{', '.join(sorted(RUN_TIME_KEYS))}.")
            if self.budgets is not None or self.speedup is not None:
                raise ValueError("A run-time (auto) schedule has no `budgets` or `speedup`; drop them.")
            self.run_time = asdict(AutoSettings(**self.run_time))  # validated, with the defaults filled in
        if not isinstance(self.metadata, dict):
            raise TypeError(f"`metadata` must be a dict, got {type(self.metadata).__name__}.")

    # ------------------------------------------------------------------------------------------------ constructors
    @classmethod
    def default(cls) -> "BudgetSchedule":
        """Dense first 20 % of the steps and the last step, budget 0.5 in between; fits any step count."""
        return cls()

    @classmethod
    def auto(cls, **settings) -> "BudgetSchedule":
        """Decide at run time, calibration-free (:class:`AutoSettings`: ``tolerance``, ``max_skips``, ``warmup``,
        ``single_skips_until``, ``max_run_span``): the skips are laid out backwards from the end, alternating with
        computed steps after a dense warm-up, and each is taken while the forecast error the run shows, grown with the
        square of the skip distance, stays below ``tolerance`` (relative). Lower ``tolerance`` is closer to dense.
        See :class:`vdit_accel.methods.step_forecast.AutoDecider` and docs/schedules.md."""
        return cls(run_time=dict(settings))

    @classmethod
    def dense(cls) -> "BudgetSchedule":
        """Budget 1.0 at every step (the dense model, through the accelerated code path)."""
        return cls(budget=1.0, dense_first=0, dense_last=False)

    @classmethod
    def uniform(cls, budget: float, dense_first: int = 0, dense_last: bool = False) -> "BudgetSchedule":
        """The same budget at every step (optionally with dense first/last steps)."""
        return cls(budget=budget, dense_first=dense_first, dense_last=dense_last)

    @classmethod
    def for_speedup(cls, speedup: float, dense_first: int | None = None, dense_last: bool | None = None,
                    skip_steps: bool = True) -> "BudgetSchedule":
        """A rule schedule aiming at a predicted transformer ``speedup`` (dense warm-up kept; the last step as
        ``dense_last`` says)."""
        return cls(speedup=speedup, dense_first=dense_first, dense_last=dense_last, skip_steps=skip_steps)

    @classmethod
    def from_any(cls, obj: "BudgetSchedule | Sequence[float] | str | os.PathLike | dict") -> "BudgetSchedule":
        """Accept a schedule object, a list of budgets, a JSON path, or a dict as written by :meth:`to_dict`."""
        if isinstance(obj, BudgetSchedule):
            return obj
        if isinstance(obj, str) and obj == "auto":
            return cls.auto()
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
    def resolve(self, num_steps: int, cost: "CostModel | float | None" = None) -> list[float]:
        """Budgets for a run of ``num_steps`` steps; raises if an explicit schedule has another length.

        ``cost`` (a :class:`vdit_accel.cost.CostModel`, or a dense fraction) is what a ``speedup`` rule plans with.
        Step 0 is always 1.0: the first call of each CFG branch runs dense (nothing is cached yet), so the planned
        budgets are the ones that will really run.
        """
        if self.budgets is not None:
            if len(self.budgets) != num_steps:
                where = f" (from {self.metadata['source']})" if "source" in self.metadata else ""
                raise ValueError(
                    f"The budget schedule{where} has {len(self.budgets)} steps but the pipeline runs "
                    f"num_inference_steps={num_steps}. Call the pipeline with num_inference_steps={len(self.budgets)}, "
                    f"or pass a schedule made for {num_steps} steps (e.g. `vdit-accel search --steps {num_steps}`)."
                )
            return [1.0] + list(self.budgets[1:])
        if self.run_time is not None:
            return [1.0] * num_steps  # an upper bound: the run decides which steps to skip
        n_first = dense_warmup_steps(num_steps) if self.dense_first is None else self.dense_first
        n_first = max(1, min(n_first, num_steps))
        n_last = 1 if (self.dense_last is not False and num_steps - n_first >= 1) else 0
        if self.speedup is not None:
            return self._plan_for_speedup(num_steps, n_first, n_last, _cost_model(cost))
        return [1.0] * n_first + [self.budget] * (num_steps - n_first - n_last) + [1.0] * n_last

    def _plan_for_speedup(self, n: int, n_first: int, n_last: int, cost) -> list[float]:
        """Cheapest-to-describe plan that reaches the target under ``cost``: dense warm-up (and last step, see
        ``dense_last``); in between token-selected steps at one budget >= MIN_TOKEN_BUDGET when that is enough (and
        token selection pays on this model), else computed steps (at MIN_TOKEN_BUDGET, or dense where token selection
        does not pay) spread evenly between skipped steps, whose tokens take their forecasts."""
        target = n / self.speedup  # total cost allowed, in dense steps
        if n - n_first - n_last <= 0:
            if self.speedup <= 1.0:
                return [1.0] * n
            raise ValueError(f"`speedup`={self.speedup} is not reachable in {n} steps: every step is dense (the first "
                             f"{n_first} warm-up and the last). Use more steps or `dense_first=...` smaller.")
        if cost.selection_pays or not self.skip_steps:
            while True:  # token-selected steps only; shrink the dense warm-up if the target needs it
                mid = n - n_first - n_last
                budget = _solve_budget(cost, (target - n_first - n_last) / mid) if mid > 0 else None
                if budget is not None and budget >= (MIN_TOKEN_BUDGET if self.skip_steps else 0.05):
                    return [1.0] * n_first + [budget] * mid + [1.0] * n_last
                if self.skip_steps or n_first <= 1:
                    break
                n_first -= 1
            if not self.skip_steps:
                raise ValueError(f"`speedup`={self.speedup} is not reachable in {n} steps with token-selected steps "
                                 f"only (skip_steps=False): the budgets would fall below 0.05. Allow skipped steps, "
                                 f"ask for a lower speedup or use more steps.")
        computed = MIN_TOKEN_BUDGET if cost.selection_pays else 1.0
        if self.dense_last is None:  # with skipped steps the last step is planned like the others (see the class)
            n_last = 0
        if self.dense_first is None:
            n_first = max(n_first, MIN_DENSE_FIRST_WITH_SKIPS)
        while True:
            mid = n - n_first - n_last
            spare = target - n_first - n_last - mid * cost.skip_cost
            m = int(math.floor(spare / (cost.step_cost(computed) - cost.skip_cost) + 1e-9)) if mid > 0 else -1
            if m >= 0 or n_first <= 1:
                break
            n_first -= 1
        if m < 0:
            best = cost.speedup([1.0] + [0.0] * (n - 1 - n_last) + [1.0] * n_last)
            raise ValueError(
                f"`speedup`={self.speedup} is not reachable in {n} steps with a dense first step"
                f"{' and a dense last step' if n_last else ''} (the most this cost model predicts is about "
                f"{best:.2f}x). Ask for a lower speedup or more steps."
            )
        m = min(m, mid)
        # each computed step in the middle of its share of the span: the runs of skips after the warm-up, between
        # computed steps and at the end are as even as they can be
        positions = {int(math.floor((i + 0.5) * mid / m)) for i in range(m)} if m else set()
        middle = [computed if j in positions else 0.0 for j in range(mid)]
        return [1.0] * n_first + middle + [1.0] * n_last

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
        known = {"budgets", "budget", "dense_first", "dense_last", "speedup", "skip_steps", "run_time", "metadata"}
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


def _solve_budget(cost, step_cost_target: float) -> float | None:
    """The largest budget in (0, 1] whose step cost is at most ``step_cost_target`` (bisection on the monotone
    curve), rounded down to 1e-4; ``None`` when even the smallest budget costs more."""
    if cost.step_cost(1.0) <= step_cost_target:
        return 1.0
    lo, hi = 0.0, 1.0
    if cost.step_cost(1e-4) > step_cost_target:
        return None
    for _ in range(40):
        mid = (lo + hi) / 2
        if cost.step_cost(max(mid, 1e-4)) <= step_cost_target:
            lo = mid
        else:
            hi = mid
    return max(1e-4, math.floor(lo * 1e4) / 1e4)


AUTO_WARMUP_FRACTION = 0.25  # schedule="auto": the dense warm-up, a fraction of the steps (AutoSettings.warmup_steps)


@dataclass(frozen=True)
class AutoSettings:
    """The settings of a run-time schedule (``schedule="auto"``, :meth:`BudgetSchedule.auto`), validated on
    construction; :class:`vdit_accel.methods.step_forecast.AutoDecider` extends it with the decisions.

    Args:
        tolerance: the forecast error (relative, grown with the square of the skip distance) a skip may carry; lower
            is closer to dense. With the default (0.25) 20 steps of the bundled model compute 11.0-11.25 steps on
            average (11 planned); at 16 steps, where the errors are larger, it refuses more (docs/schedules.md).
        max_skips: the longest run of skipped steps; 0 computes every step.
        warmup: leading steps always computed; None is a quarter of the steps, rounded up
            (:meth:`warmup_steps`).
        single_skips_until: before this fraction of the steps a run of skips is one step long.
        max_run_span: a run of more than one skip spans at most this fraction of the timestep range.
    """

    tolerance: float = 0.25
    max_skips: int = 2
    warmup: int | None = None
    single_skips_until: float = 0.45
    max_run_span: float = 0.15

    def __post_init__(self):
        for name, ok in (("tolerance", _finite_number(self.tolerance) and self.tolerance >= 0),
                         ("max_skips", isinstance(self.max_skips, int) and self.max_skips >= 0),
                         ("warmup", self.warmup is None or (isinstance(self.warmup, int) and self.warmup >= 2)),
                         ("single_skips_until",
                          _finite_number(self.single_skips_until) and 0 <= self.single_skips_until <= 1),
                         ("max_run_span", _finite_number(self.max_run_span) and 0 <= self.max_run_span <= 1)):
            value = getattr(self, name)
            if not ok or isinstance(value, bool):
                raise ValueError(f"`BudgetSchedule.auto({name}=...)` got {value!r}: tolerance is a finite number >= 0 "
                                 f"(e.g. 0.25), max_skips an int >= 0, warmup None (a quarter of the steps) or an "
                                 f"int >= 2, single_skips_until a fraction of the steps in [0, 1] (e.g. 0.45), "
                                 f"max_run_span a fraction of the timestep range in [0, 1] (e.g. 0.15).")

    def warmup_steps(self, num_steps: int) -> int:
        """The leading steps of a ``num_steps`` run that are always computed: ``warmup``, else a quarter of the steps
        rounded up. Skipping step 3 or 4 of 20 (15-20 % of the run) costs the most on the bundled model: 34.7-35.6 dB
        for one skip, against 43-54 dB for steps 5-10 (benchmarks/results/skip_profile.md)."""
        return math.ceil(AUTO_WARMUP_FRACTION * num_steps) if self.warmup is None else self.warmup


RUN_TIME_KEYS = frozenset(f.name for f in fields(AutoSettings))  # the settings of BudgetSchedule.auto
