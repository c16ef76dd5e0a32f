"""The transformer-level hook: resolves the denoising step and CFG branch of every transformer call."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from diffusers.hooks import ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from ..cost import block_flops
from ..schedule import BudgetSchedule
from .runtime import AccelRuntime, StepRecord

STEP_TRACKER_HOOK = "vdit_accel_step_tracker"


class ContextStateManager(StateManager):
    """A diffusers ``StateManager`` that falls back to a ``"default"`` context when the pipeline sets none
    (Allegro, Latte and direct transformer calls do not use ``cache_context``)."""

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


def scheduler_step_resolver(pipe) -> Callable[[Any], tuple[int, int]]:
    """Map a transformer call's ``timestep`` to ``(step_index, num_steps)`` through ``pipe.scheduler.timesteps``.

    This works for every pipeline, whatever it passes in ``cache_context``: the timestep the transformer receives
    is one of the scheduler's timesteps (per-token timesteps, as in Wan 2.2 TI2V, are reduced with ``max``).
    """

    def resolve(timestep) -> tuple[int, int]:
        ts = pipe.scheduler.timesteps
        if ts is None or len(ts) == 0:
            raise RuntimeError("The pipeline's scheduler has no timesteps; call the pipeline, not the transformer.")
        t = float(timestep.float().max()) if torch.is_tensor(timestep) else float(timestep)
        idx = int((ts.float().cpu() - t).abs().argmin())
        return idx, len(ts)

    return resolve


class StepTrackerHook(ModelHook):
    """Finds the step and the CFG branch of each transformer call, resolves the budget schedule on the first call of
    a run, and opens a :class:`StepRecord` for the statistics."""

    _is_stateful = True

    def __init__(self, runtime: AccelRuntime, schedule: BudgetSchedule, adapter):
        super().__init__()
        self.runtime = runtime
        self.schedule = schedule
        self.adapter = adapter
        self.state_manager = ContextStateManager(_NoState)
        self._timestep_pos: int | None = None

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

    def pre_forward(self, module, *args, **kwargs):
        if getattr(module, "_cache_config", None) is not None:
            raise RuntimeError(
                f"A diffusers cache ({type(module._cache_config).__name__}) was enabled on the transformer after "
                f"vdit-accel acceleration. The two would both skip work on the same blocks. Call "
                f"`pipe.transformer.disable_cache()` (or `pipe.disable_acceleration()`) first."
            )
        rt = self.runtime
        resolver = rt.step_resolver
        if resolver is not None:
            step, num_steps = resolver(self.adapter.step_timestep(self._timestep(args, kwargs)))
        else:
            step, num_steps = rt.step, rt.num_steps or (len(rt.budgets) if rt.budgets else 1)
        rt.grid = self.adapter.grid(module, args, kwargs)
        if rt.budgets is None or rt.num_steps != num_steps:
            rt.budgets = self.schedule.resolve(num_steps, self._dense_fraction(module, kwargs))
        if step < rt.step:  # a new pipeline call started
            rt.reset_records()
        rt.step, rt.num_steps = step, num_steps
        rt.context = self.state_manager.context_name
        rt.records.append(StepRecord(step=step, context=rt.context, budget=rt.budget, batch=0))
        return args, kwargs

    def _dense_fraction(self, module, kwargs) -> float:
        f, h, w = self.runtime.grid
        text = kwargs.get("encoder_hidden_states")
        n_text = text.shape[1] if torch.is_tensor(text) else 0
        return block_flops(module, f * h * w, n_text).dense_fraction

    def reset_state(self, module):
        self.state_manager.reset()
        return module
