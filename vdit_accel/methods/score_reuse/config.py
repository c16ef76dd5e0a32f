"""Settings of channel-level attention-score reuse (TimeRipple) and their per-step threshold schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

AXES = ("t", "x", "y")
PRIORITY = ("t", "y", "x")  # which neighbour a reused entry copies when several axes pass
MODES = ("emulate", "kernel")
GRANULARITIES = ("channel", "group")


def _check_theta(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"`ReuseConfig.{name}` must be a finite number >= 0, got {value!r}. Example: "
                         f"ReuseConfig(theta_min=0.2, theta_max=0.5).")


def _check_step(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"`ReuseConfig.{name}` must be a step index (int >= 0) or None (a default relative to "
                         f"num_inference_steps), got {value!r}.")


@dataclass
class ReuseConfig:
    """Channel-level attention-score reuse (TimeRipple, arXiv 2511.12035); semantics in the module docstring.

    Args:
        theta_min (`float`, defaults to 0.2): threshold at the start of the ramp (step ``i_min``).
        theta_max (`float`, defaults to 0.5): threshold at and after ``i_max``. Higher reuses more entries (more saved,
            less faithful). With ``normalize=True`` θ is in units of the per-channel standard deviation of Q/K.
        i_min, i_max (`int`, *optional*): the ramp θ_min → θ_max runs linearly over steps ``[i_min, i_max]``
            (0-based). Defaults: ``i_min = warmup_steps``, ``i_max = round(0.4·num_steps)`` (the paper's 20 of 50).
        warmup_steps (`int`, *optional*): the first steps are dense. Default ``round(0.2·num_steps)`` (the paper's
            10 of 50). More warm-up is more faithful and saves less.
        dense_last (`bool`, defaults to True): the last step is dense.
        axes (`tuple[str]`, defaults to ``("t", "x", "y")``): neighbour axes tested (OR-ed).
        window (`int`, defaults to 2): similarity window; only 2 (adjacent tokens, the paper's best) is implemented.
        mode (`str`, defaults to ``"emulate"``): ``"emulate"`` substitutes reused entries and runs dense attention
            (exact quality effect, no speedup by itself). ``"kernel"`` runs the video query rows through
            :func:`vdit_accel.kernels.channel_reuse_attention` (its coarser rule; saves time only on its Triton
            backend, on CUDA).
        normalize (`bool`, defaults to True): compare against ``θ·σ`` with σ the per-(batch, head, channel) std of
            Q (resp. K) over the call's video tokens, so θ is model-independent. False: raw units.
        granularity (`str`, defaults to ``"channel"``): ``"channel"`` decides per channel (the paper);
            ``"group"`` decides per RoPE channel group (all of a group's channels must pass).
        reuse_q, reuse_k (`bool`, default True): reuse on the query / key side.
        kernel_axis, block_channels, tile_tokens, tiles_per_group, criterion: ``mode="kernel"`` only, passed to
            :func:`vdit_accel.kernels.channel_reuse_plan` (query side only, one axis, tiles of ``tile_tokens``
            tokens reusing their group anchor's partial scores in blocks of ``block_channels`` channels; see
            ``kernels/channel_reuse/naive.py``). ``axes``, ``granularity`` and ``reuse_k`` do not apply there.
    """

    theta_min: float = 0.2
    theta_max: float = 0.5
    i_min: int | None = None
    i_max: int | None = None
    warmup_steps: int | None = None
    dense_last: bool = True
    axes: tuple[str, ...] = AXES
    window: int = 2
    mode: str = "emulate"
    normalize: bool = True
    granularity: str = "channel"
    reuse_q: bool = True
    reuse_k: bool = True
    kernel_axis: str = "t"
    block_channels: int = 16
    tile_tokens: int = 32
    tiles_per_group: int = 4
    criterion: str = "mean"

    def __post_init__(self):
        _check_theta("theta_min", self.theta_min)
        _check_theta("theta_max", self.theta_max)
        if self.theta_min > self.theta_max:
            raise ValueError(f"`ReuseConfig.theta_min` ({self.theta_min}) must be <= `theta_max` ({self.theta_max}): "
                             f"the threshold ramps up from theta_min to theta_max.")
        for name in ("i_min", "i_max", "warmup_steps"):
            _check_step(name, getattr(self, name))
        if self.i_min is not None and self.i_max is not None and self.i_min > self.i_max:
            raise ValueError(f"`ReuseConfig.i_min` ({self.i_min}) must be <= `i_max` ({self.i_max}).")
        for name in ("dense_last", "normalize", "reuse_q", "reuse_k"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"`ReuseConfig.{name}` must be a bool, got {getattr(self, name)!r}.")
        if not (self.reuse_q or self.reuse_k):
            raise ValueError("`ReuseConfig.reuse_q` and `reuse_k` are both False: nothing would be reused. "
                             "Set at least one to True.")
        axes = (self.axes,) if isinstance(self.axes, str) else tuple(self.axes)
        if not axes or any(a not in AXES for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(f"`ReuseConfig.axes` must be a non-empty subset of {AXES} without repeats, got "
                             f"{self.axes!r}.")
        self.axes = axes
        if self.window != 2 or isinstance(self.window, bool):
            raise ValueError(f"`ReuseConfig.window` must be 2 (adjacent tokens, the paper's best setting; larger "
                             f"windows are not implemented), got {self.window!r}.")
        if self.mode not in MODES:
            raise ValueError(f"`ReuseConfig.mode` must be one of {MODES}, got {self.mode!r}: 'emulate' substitutes "
                             f"reused entries and runs dense attention (exact quality effect, no speedup); 'kernel' "
                             f"runs vdit_accel.kernels.channel_reuse_attention.")
        if self.kernel_axis not in AXES:
            raise ValueError(f"`ReuseConfig.kernel_axis` must be one of {AXES}, got {self.kernel_axis!r}.")
        for name in ("block_channels", "tile_tokens", "tiles_per_group"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`ReuseConfig.{name}` must be an int >= 1, got {value!r} (the Triton kernel wants "
                                 f"powers of 2; block_channels and tile_tokens >= 16).")
        if self.criterion not in ("mean", "max"):
            raise ValueError(f"`ReuseConfig.criterion` must be 'mean' or 'max', got {self.criterion!r}.")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"`ReuseConfig.granularity` must be one of {GRANULARITIES}, got {self.granularity!r}.")

    def resolve_steps(self, num_steps: int) -> tuple[int, int, int]:
        """``(warmup_steps, i_min, i_max)`` for a run of ``num_steps`` steps (defaults filled in)."""
        warmup = self.warmup_steps if self.warmup_steps is not None else round(0.2 * num_steps)
        i_min = self.i_min if self.i_min is not None else warmup
        i_max = self.i_max if self.i_max is not None else max(i_min, round(0.4 * num_steps))
        return warmup, min(i_min, i_max), i_max

    def theta(self, step: int, num_steps: int) -> float:
        """Threshold of step ``step`` (0-based): 0 (dense) in warm-up and on the last step, θ_min up to ``i_min``,
        linear to θ_max at ``i_max``, θ_max after."""
        warmup, i_min, i_max = self.resolve_steps(num_steps)
        if step < warmup or (self.dense_last and step == num_steps - 1):
            return 0.0
        if step >= i_max:
            return float(self.theta_max)
        if step <= i_min:
            return float(self.theta_min)
        return float(self.theta_min + (step - i_min) * (self.theta_max - self.theta_min) / (i_max - i_min))

    def thetas(self, num_steps: int) -> list[float]:
        return [self.theta(i, num_steps) for i in range(num_steps)]
