"""The transformer-level hook: resolves the denoising step and CFG branch of every transformer call."""

from __future__ import annotations

import inspect
import sys
import weakref
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.hooks import ModelHook
from diffusers.hooks.hooks import BaseState, CacheContext, StateManager, _set_cache_context

from ..cost import CostModel
from ..schedule import BudgetSchedule
from ..shipped import check_schedule_for_run
from .handle import TRANSFORMER_COMPONENTS
from .runtime import AccelRuntime, StepRecord

STEP_TRACKER_HOOK = "vdit_accel_step_tracker"


class ContextStateManager(StateManager):
    """A diffusers ``StateManager`` that falls back to a ``"default"`` context when no context is set. Under
    acceleration the step tracker sets one for pipeline-driven calls: the pipeline's ``cache_context``, or an implicit
    ``call<k>`` per call of a step (ChronoEdit, Cosmos, Framepack and Allegro-style pipelines set none)."""

    @property
    def has_context(self) -> bool:
        """Whether a context is set (by the pipeline's ``cache_context`` or the tracker's implicit one)."""
        return self._context is not None

    @property
    def context_name(self) -> str:
        return self._context.name if self._context is not None else "default"

    def get_state(self):
        name = self.context_name
        if name not in self._state_cache:
            self._state_cache[name] = self._state_cls(*self._init_args, **self._init_kwargs)
        return self._state_cache[name]


class _NoState(BaseState):
    def reset(self, *args, **kwargs) -> None:
        pass


class SchedulerStepResolver:
    """Maps a transformer call's ``timestep`` to ``(step_index, num_steps)`` through the running pipeline's
    ``scheduler.timesteps``.

    *Which scheduler.* The transformer may be shared by several pipelines: ``WanPipeline(**pipe.components,
    scheduler=other)`` is the usual way to swap schedulers, and the new pipeline never saw ``enable_acceleration``.
    So the scheduler is not fixed at enable time: at every call the resolver walks up the Python call stack to the
    innermost frame whose ``self`` is a :class:`~diffusers.DiffusionPipeline` holding this transformer (as
    ``transformer`` or ``transformer_2``) and uses *that* pipeline's scheduler. This needs nothing from the pipeline
    (no wrapper around ``__call__``, no diffusers internals) and works for pipelines built after enabling. When no
    pipeline is on the stack (the transformer is called directly), the pipeline ``enable_acceleration`` was called
    on is used. The walk is a few dozen frame look-ups per transformer call, negligible next to a block.

    *Which call.* ``set_timesteps`` gives the scheduler a new ``timesteps`` tensor at the start of every pipeline
    call; that tensor object marks the call, so statistics can start afresh even on one-step runs (where the step
    index never goes down).

    The timestep the transformer receives is one of the scheduler's timesteps (per-token timesteps, as in Wan 2.2
    TI2V, are reduced with ``max``).

    Args:
        pipe: the pipeline acceleration was enabled on (the fallback; held weakly).
    """

    def __init__(self, pipe):
        self._pipe = weakref.ref(pipe)
        self._timesteps = None  # the scheduler's timesteps tensor that _index was built for
        self._index: dict[float, int] = {}  # timestep -> step index in it

    def running_pipeline(self, transformer: torch.nn.Module | None):
        """The innermost pipeline on the call stack that holds ``transformer``, else the enable-time pipeline."""
        if transformer is not None:
            frame = sys._getframe(1)
            while frame is not None:
                obj = frame.f_locals.get("self") if "self" in frame.f_code.co_varnames else None
                if isinstance(obj, DiffusionPipeline) and any(
                        getattr(obj, name, None) is transformer for name in TRANSFORMER_COMPONENTS):
                    return obj
                frame = frame.f_back
        pipe = self._pipe()
        if pipe is None:
            raise RuntimeError("The pipeline acceleration was enabled on no longer exists, and no pipeline holding "
                               "this transformer is running; call the transformer from a pipeline.")
        return pipe

    @torch.compiler.disable
    def resolve_call(self, timestep, transformer: torch.nn.Module | None = None) -> tuple[int, int, Any]:
        """``(step_index, num_steps, call marker)`` of one transformer call."""
        ts = self.running_pipeline(transformer).scheduler.timesteps
        if ts is None or len(ts) == 0:
            raise RuntimeError("The pipeline's scheduler has no timesteps; call the pipeline, not the transformer.")
        t = float(timestep.float().max()) if torch.is_tensor(timestep) else float(timestep)
        if ts is not self._timesteps:  # set_timesteps makes a new tensor for every pipeline call
            self._timesteps, self._index = ts, {}
        idx = self._index.get(t)
        if idx is None:
            idx = self._index[t] = int((ts.float().cpu() - t).abs().argmin())
        return idx, len(ts), ts

    def __call__(self, timestep, transformer: torch.nn.Module | None = None) -> tuple[int, int]:
        step, num_steps, _ = self.resolve_call(timestep, transformer)
        return step, num_steps


def scheduler_step_resolver(pipe) -> SchedulerStepResolver:
    """The step resolver :func:`vdit_accel.enable_acceleration` installs (see :class:`SchedulerStepResolver`)."""
    return SchedulerStepResolver(pipe)


class StepTrackerHook(ModelHook):
    """Finds the step and the CFG branch of each transformer call, resolves the budget schedule, and opens a
    :class:`StepRecord` for the statistics.

    Budgets are resolved again whenever anything they depend on changes: the step count, the latent grid (resolution,
    frames) or the text length (a ``speedup=`` schedule depends on the token counts through the FLOP model). Each new
    setting is also checked against the schedule file's metadata (:func:`vdit_accel.shipped.check_schedule_for_run`)
    unless ``check_schedule`` is False. Records describe the last pipeline call only.

    Args:
        runtime (`AccelRuntime`): the transformer's runtime.
        schedule (`BudgetSchedule`): the budget schedule.
        adapter: the family's adapter.
        check_schedule (`bool`, defaults to True): check the schedule's recorded grid and steps at the first call
            of each new setting.
    """

    _is_stateful = True

    def __init__(self, runtime: AccelRuntime, schedule: BudgetSchedule, adapter, check_schedule: bool = True):
        super().__init__()
        self.runtime = runtime
        self.schedule = schedule
        self.adapter = adapter
        self.check_schedule = check_schedule
        self.state_manager = ContextStateManager(_NoState)
        self._timestep_pos: int | None = None
        self._budget_key = None  # (num_steps, grid, text tokens) the budgets were resolved for
        self._call_marker = None  # the running scheduler's timesteps tensor: one per pipeline call
        self._last_step = -1
        self._seen: set = set()  # (step, context) of the current call, when there is no marker
        self._implicit = False  # an implicit context of this call is set (see _open_implicit_context)
        self._implicit_step, self._implicit_calls = -1, 0

    def initialize_hook(self, module):
        params = list(inspect.signature(module.forward).parameters)
        self._timestep_pos = params.index("timestep") if "timestep" in params else None
        return module

    def _timestep(self, args, kwargs):
        if "timestep" in kwargs:
            return kwargs["timestep"]
        if self._timestep_pos is not None and self._timestep_pos < len(args):
            return args[self._timestep_pos]
        return None

    # Python bookkeeping (timestep -> step with .item(), schedule, records, per-call cache choices) stays out of
    # torch.compile: traced, every step number and record count would become a guard and recompile each call.
    @torch.compiler.disable
    def pre_forward(self, module, *args, **kwargs):
        if getattr(module, "_cache_config", None) is not None:
            raise RuntimeError(
                f"A diffusers cache ({type(module._cache_config).__name__}) was enabled on the transformer after "
                f"vdit-accel acceleration. The two would both skip work on the same blocks. Call "
                f"`pipe.transformer.disable_cache()` (or `pipe.disable_acceleration()`) first."
            )
        rt = self.runtime
        for swap in rt.processor_swaps:
            swap.check()
        resolver = rt.step_resolver
        timestep = self._timestep(args, kwargs)
        if timestep is not None:
            rt.timestep = float(timestep.float().max()) if torch.is_tensor(timestep) else float(timestep)
        marker = None
        if resolver is None:
            step, num_steps = rt.step, rt.num_steps or (len(rt.budgets) if rt.budgets else 1)
        else:
            timestep = self.adapter.step_timestep(timestep)
            resolve_call = getattr(resolver, "resolve_call", None)
            if resolve_call is not None:
                step, num_steps, marker = resolve_call(timestep, module)
            else:
                step, num_steps = resolver(timestep)
        if resolver is not None:  # pipeline-driven; steps driven by hand (set_step) keep the "default" context
            self._open_implicit_context(module, step, marker is not None and marker is not self._call_marker)
        rt.grid = self.adapter.grid(module, args, kwargs)
        text = kwargs.get("encoder_hidden_states")
        n_text = text.shape[1] if torch.is_tensor(text) else 0
        key = (num_steps, tuple(rt.grid) if rt.grid is not None else None, n_text)
        # budgets set on the runtime by hand before the first call (the search's prefix sharing) are kept until the
        # setting changes
        if rt.budgets is None or (self._budget_key is not None and key != self._budget_key):
            if self.check_schedule:
                check_schedule_for_run(self.schedule, grid=rt.grid, num_steps=num_steps)
            rt.budgets = self.schedule.resolve(num_steps, self._cost_model(module, n_text))
        self._budget_key = key
        context = self.state_manager.context_name
        if marker is not None:
            new_call = marker is not self._call_marker
        else:  # no call marker: a step going back, or a (step, branch) seen twice, starts a new call
            new_call = step < self._last_step or (step, context) in self._seen
        if new_call:
            rt.reset_records()
            self._seen.clear()
        self._call_marker, self._last_step = marker, step
        self._seen.add((step, context))
        rt.step, rt.num_steps, rt.timesteps = step, num_steps, marker
        rt.context = context
        rt.flush_counts()
        rt.records.append(StepRecord(step=step, context=rt.context, budget=rt.budget, batch=0))
        for prepare in rt.call_preparers:
            prepare()
        return args, kwargs

    def _open_implicit_context(self, module, step: int, new_call: bool) -> None:
        """Some pipelines run CFG as two transformer calls per step without ``cache_context`` (ChronoEdit, Cosmos,
        Kandinsky 5). Sharing one ``"default"`` cache would let the second call reset the first's block caches and
        the next step reuse the other branch's outputs, so the k-th call of a step gets its own context ``call<k>``
        (set on every hook under the transformer, as diffusers' ``cache_context`` does, and cleared after the call).
        Only for pipeline-driven calls: a transformer driven by hand (``set_step``) calls the same step again to start
        a new run, and wraps its CFG branches in ``cache_context`` itself.
        """
        if self._implicit:  # left over from a call that raised before post_forward
            _set_cache_context(module, None)
            self._implicit = False
        if self.state_manager.has_context:
            return
        k = self._implicit_calls + 1 if step == self._implicit_step and not new_call else 0
        self._implicit_step, self._implicit_calls = step, k
        _set_cache_context(module, CacheContext(f"call{k}"))
        self._implicit = True

    @torch.compiler.disable
    def post_forward(self, module, output):
        self.runtime.flush_counts()
        if self._implicit:
            _set_cache_context(module, None)
            self._implicit = False
        return output

    def _cost_model(self, module, n_text: int) -> CostModel:
        f, h, w = self.runtime.grid
        return CostModel.from_flops(module, f * h * w, n_text)

    def reset_state(self, module):
        self.state_manager.reset()
        return module
