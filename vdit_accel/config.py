"""Configuration dataclasses. Pure data, validated in ``__post_init__`` with messages that name the bad field."""

from __future__ import annotations

from dataclasses import dataclass, field
from .checks import check_number
from .methods.score_reuse import ReuseConfig
from .methods.token_selection import CACHE_MODES, TokenSelectionConfig
from .schedule import BudgetSchedule

__all__ = ["CACHE_MODES", "AccelerationConfig", "ReuseConfig", "TokenSelectionConfig"]


@dataclass
class AccelerationConfig:
    """Everything ``pipe.enable_acceleration(config)`` needs.

    Args:
        schedule (`BudgetSchedule | list[float] | str`, *optional*):
            Per-step token budgets: a :class:`BudgetSchedule`, a list with one budget per step, or a path to a
            schedule JSON file. Default: the model's shipped schedule if one exists, else
            :meth:`BudgetSchedule.auto` (run-time decisions, calibration-free; docs/schedules.md); with token
            selection off (``reuse`` alone), :meth:`BudgetSchedule.default`.
        speedup (`float`, *optional*):
            A target transformer speedup turned into a schedule (instead of ``schedule``).
        token_selection (`TokenSelectionConfig`, *optional*):
            Token-selection settings; ``None`` turns token selection off (useful with ``reuse`` alone).
        reuse (`ReuseConfig`, *optional*):
            Channel-level attention-score reuse settings (TimeRipple); ``None`` (default) is off.
        check_schedule (`bool`, defaults to True):
            Check a schedule file's metadata against the run: its ``model`` when acceleration is enabled, its latent
            ``grid`` (resolution, frames) and ``steps`` at the first call of each setting. A mismatch raises
            ``ValueError``. False applies the schedule anyway (for a schedule you know transfers).
    """

    schedule: BudgetSchedule | list | str | None = None
    speedup: float | None = None
    token_selection: TokenSelectionConfig | None = field(default_factory=TokenSelectionConfig)
    reuse: ReuseConfig | None = None
    check_schedule: bool = True

    def __post_init__(self):
        if self.schedule is not None and self.speedup is not None:
            raise ValueError("Give either `schedule` or `speedup`, not both: a speedup target is turned into a "
                             "schedule. Drop one of them.")
        if self.speedup is not None:
            check_number("speedup", self.speedup, 1.0, None, " Example: speedup=2.0 (1.0 = dense).")
            self.schedule = BudgetSchedule.for_speedup(float(self.speedup))
        elif self.schedule is not None:
            self.schedule = BudgetSchedule.from_any(self.schedule)
        if self.token_selection is not None and not isinstance(self.token_selection, TokenSelectionConfig):
            raise TypeError(f"`token_selection` must be a TokenSelectionConfig or None, got "
                            f"{type(self.token_selection).__name__}.")
        if self.reuse is not None and not isinstance(self.reuse, ReuseConfig):
            raise TypeError(f"`reuse` must be a vdit_accel.ReuseConfig or None, got {type(self.reuse).__name__}. "
                            f"Example: reuse=ReuseConfig(theta_max=0.5).")
        if not isinstance(self.check_schedule, bool):
            raise TypeError(f"`check_schedule` must be a bool, got {self.check_schedule!r}.")
        if self.token_selection is None and self.reuse is None:
            raise ValueError("Both `token_selection` and `reuse` are None: nothing to accelerate. Keep the default "
                             "`token_selection=TokenSelectionConfig()` or pass `reuse=ReuseConfig(...)`.")
        if self.token_selection is None and self.schedule is not None and self.schedule.run_time is not None:
            raise ValueError("schedule=\"auto\" decides which steps to skip, and skipped steps are part of token "
                             "selection, which `token_selection=None` turns off. Keep token selection on, or drop "
                             "the schedule.")
