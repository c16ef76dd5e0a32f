"""``enable_acceleration`` / ``disable_acceleration``: the one-line entry points.

>>> import vdit_accel                                   # adds DiffusionPipeline.enable_acceleration
>>> pipe = vdit_accel.load_default_pipeline()           # or WanPipeline.from_pretrained(...)
>>> pipe.enable_acceleration(speedup=2.0)               # doctest: +SKIP
>>> video = pipe("a red circle moving right").frames[0] # doctest: +SKIP
>>> pipe.disable_acceleration()                         # exact original behaviour again
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import HookRegistry

from .adapters import ModelAdapter, get_adapter
from .config import AccelerationConfig, TokenSelectionConfig
from .methods.token_selection import apply_token_selection, remove_token_selection
from .runtime import STEP_TRACKER_HOOK, AccelRuntime, StepTrackerHook, scheduler_step_resolver
from .runtime.handle import HANDLE_ATTR as _HANDLE_ATTR
from .runtime.handle import transformers_of as _transformers_of
from .schedule import BudgetSchedule



@dataclass
class AccelerationHandle:
    """What :func:`enable_acceleration` installed on one transformer, so it can be removed exactly."""

    transformer: torch.nn.Module
    adapter: ModelAdapter
    config: AccelerationConfig
    schedule: BudgetSchedule
    runtime: AccelRuntime
    processors: dict[str, Any] = field(default_factory=dict)
    extra_removers: list = field(default_factory=list)

    def remove(self) -> None:
        for fn in reversed(self.extra_removers):
            fn()
        if self.config.token_selection is not None:
            remove_token_selection(self.transformer, self.adapter, self.processors)
        registry = getattr(self.transformer, "_diffusers_hook", None)
        if registry is not None:
            registry.remove_hook(STEP_TRACKER_HOOK, recurse=False)
            registry.invalidate_child_registries_cache()
        delattr(self.transformer, _HANDLE_ATTR)


def build_config(config: AccelerationConfig | None = None, *, speedup: float | None = None,
                 schedule: BudgetSchedule | list | str | None = None, reuse: Any = None,
                 token_selection: TokenSelectionConfig | None | str = "default") -> AccelerationConfig:
    """Merge the keyword shortcuts of :func:`enable_acceleration` into one validated :class:`AccelerationConfig`."""
    if config is not None:
        if not isinstance(config, AccelerationConfig):
            raise TypeError(f"`config` must be a vdit_accel.AccelerationConfig, got {type(config).__name__}. "
                            f"Use keyword arguments (speedup=..., schedule=...) or AccelerationConfig(...).")
        if speedup is not None or schedule is not None or reuse is not None or token_selection != "default":
            raise ValueError("Pass either `config` or the keyword shortcuts (speedup, schedule, reuse, "
                             "token_selection), not both.")
        return config
    kwargs: dict[str, Any] = dict(speedup=speedup, schedule=schedule, reuse=reuse)
    if token_selection != "default":
        kwargs["token_selection"] = token_selection
    return AccelerationConfig(**kwargs)


def accelerate_transformer(transformer: torch.nn.Module, config: AccelerationConfig, schedule: BudgetSchedule,
                           step_resolver=None) -> AccelerationHandle:
    """Install acceleration on one transformer (checks first; nothing is changed when a check fails).

    ``step_resolver`` maps a call's timestep to ``(step, num_steps)``; without one, drive the step yourself with
    :func:`set_step` (useful for benchmarks that call the transformer directly).
    """
    adapter = get_adapter(transformer)
    if hasattr(transformer, _HANDLE_ATTR):
        raise RuntimeError("Acceleration is already enabled on this transformer. Call `disable_acceleration()` "
                           "first to change the configuration.")
    cache_config = getattr(transformer, "_cache_config", None)
    if cache_config is not None:
        raise RuntimeError(
            f"The transformer has a diffusers cache enabled ({type(cache_config).__name__}); vdit-accel and the "
            f"built-in caches both skip work on the same blocks and do not compose. Call "
            f"`pipe.transformer.disable_cache()` first."
        )
    runtime = AccelRuntime(step_resolver=step_resolver)
    handle = AccelerationHandle(transformer, adapter, config, schedule, runtime)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(StepTrackerHook(runtime, schedule, adapter), STEP_TRACKER_HOOK)
    if config.token_selection is not None:
        handle.processors = apply_token_selection(transformer, adapter, runtime, config.token_selection)
    if config.reuse is not None:
        from .methods.score_reuse import apply_score_reuse  # issue 5; imported lazily

        handle.extra_removers.append(apply_score_reuse(transformer, adapter, runtime, config.reuse))
    registry.invalidate_child_registries_cache()
    setattr(transformer, _HANDLE_ATTR, handle)
    return handle


def _default_schedule(pipe) -> BudgetSchedule:
    try:
        from .search.shipped import shipped_schedule_for  # searched schedules shipped with the package
    except ImportError:
        return BudgetSchedule.default()
    return shipped_schedule_for(pipe) or BudgetSchedule.default()


def enable_acceleration(pipe, config: AccelerationConfig | None = None, *, speedup: float | None = None,
                        schedule: BudgetSchedule | list | str | None = None, reuse: Any = None,
                        token_selection: TokenSelectionConfig | None | str = "default"):
    """Accelerate a diffusers video pipeline in place; returns the pipeline.

    Args:
        pipe: a supported diffusers pipeline (``vdit_accel.supported_transformers()`` lists the transformers).
        config (`AccelerationConfig`, *optional*): a full configuration; or use the shortcuts below.
        speedup (`float`, *optional*): target transformer speedup, turned into a budget schedule (linear cost
            model from the model's FLOP count; higher is faster and less faithful).
        schedule (*optional*): a :class:`BudgetSchedule`, a list with one budget per step, or a JSON path.
        reuse (*optional*): channel-level attention-score reuse (TimeRipple) settings.
        token_selection (*optional*): a :class:`TokenSelectionConfig`, or ``None`` to turn token selection off.

    Every check runs before anything is installed: an unsupported pipeline, a bad budget, a corrupt schedule file,
    acceleration already enabled, or a diffusers cache already enabled raise and leave the pipeline unchanged.

    Example:
        >>> pipe.enable_acceleration()                        # doctest: +SKIP
        >>> pipe.enable_acceleration(speedup=2.5)             # doctest: +SKIP
        >>> pipe.enable_acceleration(schedule="search.json")  # doctest: +SKIP
    """
    transformers = _transformers_of(pipe)
    if not transformers:
        raise ValueError(f"{type(pipe).__name__} has no `transformer` component; vdit-accel accelerates video "
                         f"diffusion transformer pipelines.")
    cfg = build_config(config, speedup=speedup, schedule=schedule, reuse=reuse, token_selection=token_selection)
    sched = cfg.schedule if cfg.schedule is not None else _default_schedule(pipe)
    for name, tr in transformers:  # validate everything before touching anything
        get_adapter(tr)
        if hasattr(tr, _HANDLE_ATTR):
            raise RuntimeError("Acceleration is already enabled on this pipeline. Call `pipe.disable_acceleration()` "
                               "first to change the configuration.")
        if getattr(tr, "_cache_config", None) is not None:
            raise RuntimeError(
                f"pipe.{name} has a diffusers cache enabled ({type(tr._cache_config).__name__}); vdit-accel and the "
                f"built-in caches both skip work on the same blocks and do not compose. Call "
                f"`pipe.{name}.disable_cache()` first."
            )
    resolver = scheduler_step_resolver(pipe)
    for _, tr in transformers:
        accelerate_transformer(tr, cfg, sched, step_resolver=resolver)
    return pipe


def disable_acceleration(pipe) -> Any:
    """Remove everything :func:`enable_acceleration` installed; output is bit-identical to never accelerating."""
    for _, tr in _transformers_of(pipe):
        handle = getattr(tr, _HANDLE_ATTR, None)
        if handle is not None:
            handle.remove()
    return pipe


def is_accelerated(pipe_or_transformer) -> bool:
    modules = [m for _, m in _transformers_of(pipe_or_transformer)] or [pipe_or_transformer]
    return any(hasattr(m, _HANDLE_ATTR) for m in modules)


def get_runtime(pipe_or_transformer, name: str = "transformer") -> AccelRuntime:
    """The runtime (step, budgets, per-step token counts) of an accelerated pipeline or transformer."""
    module = getattr(pipe_or_transformer, name, pipe_or_transformer)
    handle = getattr(module, _HANDLE_ATTR, None)
    if handle is None:
        raise ValueError("Acceleration is not enabled; call `pipe.enable_acceleration()` first.")
    return handle.runtime


def summary(pipe_or_transformer, name: str = "transformer") -> dict[str, Any]:
    """Per-step budgets and token counts of the last run (what ran, summed over CFG branches)."""
    rt = get_runtime(pipe_or_transformer, name)
    return dict(budgets=rt.budgets, **rt.summary())


def set_step(transformer: torch.nn.Module, step: int, num_steps: int) -> None:
    """Drive the step by hand for a transformer accelerated without a pipeline (``step_resolver=None``)."""
    rt = get_runtime(transformer)
    rt.step, rt.num_steps = step, num_steps
