"""``enable_acceleration`` / ``disable_acceleration``: the one-line entry points.

>>> import vdit_accel                                   # adds DiffusionPipeline.enable_acceleration
>>> pipe = vdit_accel.load_default_pipeline()           # or WanPipeline.from_pretrained(...)
>>> pipe.enable_acceleration(speedup=2.0)               # doctest: +SKIP
>>> video = pipe("a red circle moving right").frames[0] # doctest: +SKIP
>>> pipe.disable_acceleration()                         # exact original behaviour again
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from diffusers.hooks import HookRegistry

from .adapters import ModelAdapter, get_adapter
from .config import AccelerationConfig, TokenSelectionConfig
from .methods import registered_methods
from .methods.step_forecast import AutoDecider
from .runtime import STEP_TRACKER_HOOK, AccelRuntime, StepTrackerHook, scheduler_step_resolver
from .runtime.handle import HANDLE_ATTR, get_handle, transformers_of
from .schedule import BudgetSchedule
from .shipped import ShippedSchedule, check_schedule_for_pipe, shipped_schedule_for


@dataclass
class AccelerationHandle:
    """What :func:`enable_acceleration` installed on one transformer, so it can be removed exactly.

    ``removers`` holds one zero-argument callable per applied method (from the method registry), called in reverse
    order by :meth:`remove`.
    """

    transformer: torch.nn.Module
    adapter: ModelAdapter
    config: AccelerationConfig
    schedule: BudgetSchedule
    runtime: AccelRuntime
    removers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def processors(self) -> "_OriginalProcessors":
        """``{attention module name: processor restored on removal}``; assigning an entry is
        :meth:`replace_original_processor`."""
        return _OriginalProcessors(self)

    def replace_original_processor(self, name: str, processor) -> None:
        """Make ``processor`` what :meth:`remove` restores on the attention module ``name`` (used by the parallel
        code, which swaps in a dispatching processor under an accelerated one)."""
        for swap in self.runtime.processor_swaps:
            if name in swap.entries:
                module, _, installed = swap.entries[name]
                swap.entries[name] = (module, processor, installed)

    def remove(self) -> None:
        while self.removers:
            self.removers.pop()()
        registry = getattr(self.transformer, "_diffusers_hook", None)
        if registry is not None:
            if registry.get_hook(STEP_TRACKER_HOOK) is not None:
                registry.remove_hook(STEP_TRACKER_HOOK, recurse=False)
            registry.invalidate_child_registries_cache()
        if get_handle(self.transformer) is self:
            delattr(self.transformer, HANDLE_ATTR)


class _OriginalProcessors(MutableMapping):
    """Write-through view of the processors an :class:`AccelerationHandle` restores (its methods' ProcessorSwaps)."""

    def __init__(self, handle: AccelerationHandle):
        self._handle = handle

    def _entries(self) -> dict[str, Any]:
        return {name: original for swap in self._handle.runtime.processor_swaps
                for name, (_, original, _) in swap.entries.items()}

    def __getitem__(self, name: str):
        return self._entries()[name]

    def __setitem__(self, name: str, processor) -> None:
        if name not in self._entries():
            raise KeyError(name)
        self._handle.replace_original_processor(name, processor)

    def __delitem__(self, name: str) -> None:
        raise TypeError("The processors restored by disable_acceleration cannot be dropped, only replaced.")

    def __iter__(self):
        return iter(self._entries())

    def __len__(self) -> int:
        return len(self._entries())


def build_config(config: AccelerationConfig | None = None, *, speedup: float | None = None,
                 schedule: BudgetSchedule | list | str | None = None, reuse: Any = None,
                 token_selection: TokenSelectionConfig | None | str = "default",
                 check_schedule: bool | None = None) -> AccelerationConfig:
    """Merge the keyword shortcuts of :func:`enable_acceleration` into one validated :class:`AccelerationConfig`."""
    if config is not None:
        if not isinstance(config, AccelerationConfig):
            raise TypeError(f"`config` must be a vdit_accel.AccelerationConfig, got {type(config).__name__}. "
                            f"Use keyword arguments (speedup=..., schedule=...) or AccelerationConfig(...).")
        if (speedup is not None or schedule is not None or reuse is not None or token_selection != "default"
                or check_schedule is not None):
            raise ValueError("Pass either `config` or the keyword shortcuts (speedup, schedule, reuse, "
                             "token_selection, check_schedule), not both.")
        return config
    kwargs: dict[str, Any] = dict(speedup=speedup, schedule=schedule, reuse=reuse)
    if token_selection != "default":
        kwargs["token_selection"] = token_selection
    if check_schedule is not None:
        kwargs["check_schedule"] = check_schedule
    return AccelerationConfig(**kwargs)


def accelerate_transformer(transformer: torch.nn.Module, config: AccelerationConfig, schedule: BudgetSchedule,
                           step_resolver=None) -> AccelerationHandle:
    """Install acceleration on one transformer (checks first; nothing is changed when a check fails).

    The step tracker goes on first, then every registered method (:func:`vdit_accel.methods.registered_methods`)
    whose :class:`AccelerationConfig` field is not ``None``, in registration order. If a method fails to install,
    what was installed is removed again before the error propagates.

    Args:
        transformer (`torch.nn.Module`): a supported transformer (not a ``torch.compile`` wrapper).
        config (`AccelerationConfig`): the validated configuration.
        schedule (`BudgetSchedule`): the budget schedule.
        step_resolver (*optional*): maps a call's timestep to ``(step, num_steps)``; without one, drive the step
            yourself with :func:`set_step` (useful for benchmarks that call the transformer directly).
    """
    _check_not_compiled(transformer, "transformer")
    adapter = get_adapter(transformer)
    if get_handle(transformer) is not None:
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
    if schedule.run_time is not None:
        runtime.auto = AutoDecider(**schedule.run_time)
    handle = AccelerationHandle(transformer, adapter, config, schedule, runtime)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    try:
        for method in registered_methods():
            method_config = getattr(config, method.name, None)
            if method_config is not None:
                handle.removers.append(method.apply(transformer, adapter, runtime, method_config))
        # Registered last, so it is the outermost hook: methods' transformer-level hooks (whole-step reuse) read the
        # step and budget it resolves.
        registry.register_hook(StepTrackerHook(runtime, schedule, adapter, check_schedule=config.check_schedule),
                               STEP_TRACKER_HOOK)
    except BaseException:
        handle.remove()  # nothing half-applied
        raise
    registry.invalidate_child_registries_cache()
    setattr(transformer, HANDLE_ATTR, handle)
    return handle


def _check_not_compiled(module, where: str) -> None:
    if isinstance(module, torch._dynamo.eval_frame.OptimizedModule):
        raise TypeError(
            f"pipe.{where} is a torch.compile wrapper ({type(module).__name__}); vdit-accel installs hooks on the "
            f"model itself. Enable acceleration on the uncompiled pipeline first, then compile in place with "
            f"`pipe.{where}.compile()` (not `pipe.{where} = torch.compile(pipe.{where})`). To undo the wrapper: "
            f"`pipe.{where} = pipe.{where}._orig_mod`."
        )


def _default_schedule(pipe, cfg: AccelerationConfig) -> BudgetSchedule:
    """The schedule shipped for the pipeline's model (:mod:`vdit_accel.shipped`), else run-time decisions
    (``auto``: no calibration, any model); the default rule when token selection is off (reuse alone skips no
    step)."""
    if cfg.token_selection is None:
        return BudgetSchedule.default()
    return shipped_schedule_for(pipe) or BudgetSchedule.auto()


def enable_acceleration(pipe, config: AccelerationConfig | None = None, *, speedup: float | None = None,
                        schedule: BudgetSchedule | list | str | None = None, reuse: Any = None,
                        token_selection: TokenSelectionConfig | None | str = "default",
                        check_schedule: bool | None = None):
    """Accelerate a diffusers video pipeline in place; returns the pipeline.

    Args:
        pipe: a supported diffusers pipeline (``vdit_accel.supported_transformers()`` lists the transformers).
        config (`AccelerationConfig`, *optional*): a full configuration; or use the shortcuts below.
        speedup (`float`, *optional*): target transformer speedup, turned into a budget schedule (linear cost
            model from the model's FLOP count; higher is faster and less faithful).
        schedule (*optional*): a :class:`BudgetSchedule`, a list with one budget per step, or a JSON path.
        reuse (*optional*): channel-level attention-score reuse (TimeRipple) settings.
        token_selection (*optional*): a :class:`TokenSelectionConfig`, or ``None`` to turn token selection off.
        check_schedule (`bool`, *optional*, defaults to True): check a schedule file's metadata against the run (its
            model now, its latent grid and step count at the first call of each setting); ``False`` applies it
            anyway.

    Every check runs before anything is installed: an unsupported pipeline, a ``torch.compile`` wrapper as the
    transformer, a bad budget, a corrupt schedule file, a schedule made for another model, acceleration already
    enabled, or a diffusers cache already enabled raise and leave the pipeline unchanged.

    At every transformer call, an attention processor replaced since enabling (``set_attn_processor``,
    ``fuse_qkv_projections``) raises :class:`~vdit_accel.runtime.processors.ProcessorReplacedError` rather than
    running silently without acceleration; :func:`disable_acceleration` keeps such a processor.

    Example:
        >>> pipe.enable_acceleration()                        # doctest: +SKIP
        >>> pipe.enable_acceleration(speedup=2.5)             # doctest: +SKIP
        >>> pipe.enable_acceleration(schedule="search.json")  # doctest: +SKIP
    """
    transformers = transformers_of(pipe)
    if not transformers:
        raise ValueError(f"{type(pipe).__name__} has no `transformer` component; vdit-accel accelerates video "
                         f"diffusion transformer pipelines.")
    cfg = build_config(config, speedup=speedup, schedule=schedule, reuse=reuse, token_selection=token_selection,
                       check_schedule=check_schedule)
    for name, tr in transformers:  # validate everything before touching anything
        _check_not_compiled(tr, name)
        get_adapter(tr)
        if get_handle(tr) is not None:
            raise RuntimeError("Acceleration is already enabled on this pipeline. Call `pipe.disable_acceleration()` "
                               "first to change the configuration.")
        if getattr(tr, "_cache_config", None) is not None:
            raise RuntimeError(
                f"pipe.{name} has a diffusers cache enabled ({type(tr._cache_config).__name__}); vdit-accel and the "
                f"built-in caches both skip work on the same blocks and do not compose. Call "
                f"`pipe.{name}.disable_cache()` first."
            )
    sched = cfg.schedule if cfg.schedule is not None else _default_schedule(pipe, cfg)
    if cfg.check_schedule and not isinstance(sched, ShippedSchedule):
        try:
            check_schedule_for_pipe(sched, pipe)
        except ValueError as e:
            raise ValueError(f"{e} To skip this check, pass `check_schedule=False`.") from None
    resolver = scheduler_step_resolver(pipe)
    done = []
    try:
        for _, tr in transformers:
            done.append(accelerate_transformer(tr, cfg, sched, step_resolver=resolver))
    except BaseException:
        for handle in reversed(done):
            handle.remove()
        raise
    return pipe


def disable_acceleration(pipe) -> Any:
    """Remove everything :func:`enable_acceleration` installed; output is bit-identical to never accelerating."""
    for _, tr in transformers_of(pipe):
        handle = get_handle(tr)
        if handle is not None:
            handle.remove()
    return pipe


def is_accelerated(pipe_or_transformer) -> bool:
    modules = [m for _, m in transformers_of(pipe_or_transformer)] or [pipe_or_transformer]
    return any(get_handle(m) is not None for m in modules)


def get_runtime(pipe_or_transformer, name: str = "transformer") -> AccelRuntime:
    """The runtime (step, budgets, per-step token counts) of an accelerated pipeline or transformer."""
    module = getattr(pipe_or_transformer, name, pipe_or_transformer)
    handle = get_handle(module)
    if handle is None:
        raise ValueError("Acceleration is not enabled; call `pipe.enable_acceleration()` first.")
    return handle.runtime


def summary(pipe_or_transformer, name: str = "transformer") -> dict[str, Any]:
    """Per-step budgets and token counts of the last run (what ran, summed over CFG branches). A snapshot: the
    budgets are a copy (``schedule="auto"`` rewrites the runtime's list at every run)."""
    rt = get_runtime(pipe_or_transformer, name)
    return dict(budgets=None if rt.budgets is None else list(rt.budgets), **rt.summary())


def set_step(transformer: torch.nn.Module, step: int, num_steps: int) -> None:
    """Drive the step by hand for a transformer accelerated without a pipeline (``step_resolver=None``)."""
    rt = get_runtime(transformer)
    rt.step, rt.num_steps = step, num_steps
