"""Configuration dataclasses. Pure data, validated in ``__post_init__`` with messages that name the bad field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .schedule import BudgetSchedule

CACHE_MODES = ("residual", "output")


def _check_number(name: str, value: Any, lo: float | None = None, hi: float | None = None, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number, got {value!r}.{hint}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ValueError(f"`{name}` must be in {rng}, got {value!r}.{hint}")


@dataclass
class TokenSelectionConfig:
    """Token selection with block-output reuse (Astraea, arXiv 2506.05096).

    Per block, step and CFG branch, every video token gets the score
    ``w_alpha * LSE_prev * Δ + w_beta * exp(n_skip)`` and the top ``ceil(θ·N)`` tokens run the block; the rest
    reuse their cached result.

    Args:
        w_alpha (`float`, defaults to 1.0):
            Weight of the significance term ``LSE_prev · Δ`` (previous attention log-sum-exp times how much the
            token's block input moved since it was last computed).
        w_beta (`float`, defaults to 0.5):
            Weight of the staleness penalty ``exp(n_skip)``. Higher refreshes long-skipped tokens sooner (less
            drift, less freedom to follow the significance term). Published optimum ≈ 0.5.
        cache (`str`, defaults to ``"output"``):
            What a skipped token reuses: ``"output"`` reuses the cached raw block output; ``"residual"`` adds the
            cached block residual (output − input) to its current input. On the bundled trained model raw-output
            caching measured better SSIM at every budget and better PSNR at θ = 0.7 and 0.4
            (benchmarks/results/cache_modes.md), so it is the default; on random weights residual caching wins.
        normalize_significance (`bool`, defaults to True):
            Divide ``LSE·Δ`` by its per-sample mean, so ``w_beta`` means the same on every model whatever the scale
            of its hidden states. With False the published formula is used verbatim.
        min_tokens (`int`, defaults to 1):
            Lower bound on the number of tokens recomputed per block.
    """

    w_alpha: float = 1.0
    w_beta: float = 0.5
    cache: str = "output"
    normalize_significance: bool = True
    min_tokens: int = 1

    def __post_init__(self):
        _check_number("TokenSelectionConfig.w_alpha", self.w_alpha, 0.0)
        _check_number("TokenSelectionConfig.w_beta", self.w_beta, 0.0)
        if self.cache not in CACHE_MODES:
            raise ValueError(f"`TokenSelectionConfig.cache` must be one of {CACHE_MODES}, got {self.cache!r}.")
        if not isinstance(self.normalize_significance, bool):
            raise TypeError(f"`TokenSelectionConfig.normalize_significance` must be a bool, got "
                            f"{self.normalize_significance!r}.")
        if isinstance(self.min_tokens, bool) or not isinstance(self.min_tokens, int) or self.min_tokens < 1:
            raise ValueError(f"`TokenSelectionConfig.min_tokens` must be an int >= 1, got {self.min_tokens!r}.")


@dataclass
class AccelerationConfig:
    """Everything ``pipe.enable_acceleration(config)`` needs.

    Args:
        schedule (`BudgetSchedule | list[float] | str`, *optional*):
            Per-step token budgets: a :class:`BudgetSchedule`, a list with one budget per step, or a path to a
            schedule JSON file. Default: the model's shipped searched schedule if one exists, else
            :meth:`BudgetSchedule.default` (dense first 20 % of steps and the last step, 0.5 in between).
        speedup (`float`, *optional*):
            A target transformer speedup turned into a schedule (instead of ``schedule``).
        token_selection (`TokenSelectionConfig`, *optional*):
            Token-selection settings; ``None`` turns token selection off (useful with ``reuse`` alone).
        reuse (*optional*):
            Channel-level attention-score reuse settings (TimeRipple); ``None`` (default) is off.
    """

    schedule: BudgetSchedule | list | str | None = None
    speedup: float | None = None
    token_selection: TokenSelectionConfig | None = field(default_factory=TokenSelectionConfig)
    reuse: Any = None

    def __post_init__(self):
        if self.schedule is not None and self.speedup is not None:
            raise ValueError("Give either `schedule` or `speedup`, not both: a speedup target is turned into a "
                             "schedule. Drop one of them.")
        if self.speedup is not None:
            _check_number("speedup", self.speedup, 1.0, None, " Example: speedup=2.0 (1.0 = dense).")
            self.schedule = BudgetSchedule.for_speedup(float(self.speedup))
        elif self.schedule is not None:
            self.schedule = BudgetSchedule.from_any(self.schedule)
        if self.token_selection is not None and not isinstance(self.token_selection, TokenSelectionConfig):
            raise TypeError(f"`token_selection` must be a TokenSelectionConfig or None, got "
                            f"{type(self.token_selection).__name__}.")
        if self.reuse is not None:
            from .methods.score_reuse import ReuseConfig  # lazy: keeps config import-light

            if not isinstance(self.reuse, ReuseConfig):
                raise TypeError(f"`reuse` must be a vdit_accel.ReuseConfig or None, got {type(self.reuse).__name__}. "
                                f"Example: reuse=ReuseConfig(theta_max=0.5).")
        if self.token_selection is None and self.reuse is None:
            raise ValueError("Both `token_selection` and `reuse` are None: nothing to accelerate. Keep the default "
                             "`token_selection=TokenSelectionConfig()` or pass `reuse=ReuseConfig(...)`.")
