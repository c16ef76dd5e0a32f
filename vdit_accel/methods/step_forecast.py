"""Whole-step reuse: a step whose budget is 0 runs no block; the transformer's output is a forecast.

The hook sits on the transformer, inside the step tracker (which resolves the step and its budget first). Per CFG
branch it keeps the Taylor history (:class:`~vdit_accel.methods.forecast.TensorForecast`, first order along the
timestep axis) of the transformer's output over the steps that were computed. A budget-0 step returns the forecast
without running the embedding, the blocks or the head; a budget-0 step with nothing to forecast from (the first call
of a branch) is computed densely and recorded as such.

With ``schedule="auto"`` (:class:`AutoDecider`) the hook also decides *at run time* which steps to skip, from a signal
the run produces for free: at every computed step the forecast made before computing it is compared with the
computed output. That relative error says how well a forecast holds at this point of the trajectory, whatever the
model; skips are spent where it is small.

The forecast is *damped*: ``y_last + λ_h · (taylor(t) − y_last)``, between reusing the last output (λ = 0) and the
full extrapolation (λ = 1). λ is fitted at every computed step, for free, as the least-squares factor that would have
best predicted the output just computed from the history before it (clipped to [0, 1]), at the distance ``h_fit``
that forecast reached; nearer or farther the deviation from the line is taken to grow with the square of the
distance, ``λ_h = 1 − (1 − λ) · h / h_fit``. Measured (bundled model, PSNR against dense, dB; docs/schedules.md):

    skip pattern (D computed, . skipped)     reuse  full, cap 1  λ fitted, constant  λ fitted, ∝ distance (this)
    20 steps  DDDDD.D.D.D.D.D.D.DD              36.9   42.5         45.7                46.3
    20 steps  DDDD...D..D..D.D.D.D              30.5   24.4         31.8                32.0
    20 steps  DDDD.D...D...D...D.D              -      -            30.8                27.3
    50 steps  DDD.D..D..D.D.D..D.. (6 prompts)  -      45.6         39.4                42.7
"""

from __future__ import annotations

import math

import torch
from diffusers.hooks import ModelHook
from diffusers.hooks.hooks import BaseState
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from ..runtime import AccelRuntime, ContextStateManager
from ..schedule import AutoSettings
from .forecast import TensorForecast

STEP_FORECAST_HOOK = "vdit_accel_step_forecast"
INITIAL_DAMPING = 0.5  # λ before the first fit (a skip right after the warm-up); fitted from the third computed step


class StepForecastState(BaseState):
    """Per CFG branch: Taylor history of the transformer's output over its computed steps."""

    def __init__(self, order: int = 1, horizon: float | None = 2.0):
        self.order, self.horizon = order, horizon
        self.reset()

    def reset(self, *args, **kwargs) -> None:
        self.forecast = TensorForecast(self.order, self.horizon)
        self.damping = INITIAL_DAMPING  # λ: the fraction of the Taylor step taken (fitted at each computed step)
        self.fit_distance = 1.0  # how far (in history intervals) the forecast that λ was fitted on reached
        self.shape: torch.Size | None = None
        self.template: str = "tensor"  # what the transformer returns: "tensor", "tuple" or "output"
        self.step: int = -1
        self.computed: int = 0  # computed calls in this run
        self.error: float | None = None  # relative error of the forecast at the last computed step, per unit² horizon


class AutoDecider(AutoSettings):
    """Run-time skip decisions for ``schedule="auto"`` (the settings: :class:`~vdit_accel.schedule.AutoSettings`).

    *Where skips may fall* (:meth:`candidates`, fixed by the run's timesteps): the plan is laid out backwards from the
    end. The last step may be skipped alone (it moves the latent by the run's smallest σ interval on flow-matching
    schedules); the step before it is computed (the largest interval there). Further back, runs of skips alternate
    with one computed step: a run is one step long before the fraction ``single_skips_until`` of the steps (early in
    the trajectory, where the content forms, a forecast two steps out costs far more than later); after it a run may
    grow to ``max_skips`` steps while it spans at most ``max_run_span`` of the timestep range (the forecast's error
    grows with the distance it extrapolates, not with the number of steps). The first ``warmup`` steps are computed
    (default: a quarter of the steps, :meth:`~vdit_accel.schedule.AutoSettings.warmup_steps`). At 20 steps of the
    bundled model the plan is ``DDDDD.D.D..D..D.D.D.``: alternating forwards from the warm-up instead would skip step
    4, the second-costliest skip of ``benchmarks/results/skip_profile.md``, and step 18, the costliest late one.

    *Whether a candidate is skipped* (:meth:`skip`, at run time): after a computed step the forecast error ``e`` it
    showed (relative, ‖y − ŷ‖ / ‖y‖, normalised to one timestep interval of the history it came from) predicts the
    error of skipping ahead by ``h`` intervals as ``e·h²`` (the error of a first-order extrapolation grows with the
    square of the distance). A candidate is skipped while that prediction, summed over the run, stays below
    ``tolerance``; a skip also needs three computed calls of every branch, the third one measuring the error. Every
    quantity is a ratio or a fraction, so the defaults mean the same on every model and step count. Measured:
    docs/schedules.md.
    """

    def candidates(self, num_steps: int, timesteps=None) -> frozenset[int]:
        """The steps of a ``num_steps`` run that may be skipped. ``timesteps``: the scheduler's (a tensor or a
        sequence, first step first); without them the intervals are taken as even."""
        warmup = self.warmup_steps(num_steps)
        if self.max_skips < 1 or num_steps - 1 < max(warmup, 2):
            return frozenset()
        spans = _normalised_intervals(num_steps, timesteps)
        single_until = self.single_skips_until * num_steps
        steps = {num_steps - 1}
        anchor = num_steps - 2  # computed
        while anchor - 1 >= warmup:
            run = 1
            while (run < self.max_skips and anchor - run - 1 >= max(warmup, single_until)
                   and sum(spans[anchor - run - 1:anchor]) <= self.max_run_span):
                run += 1
            steps.update(range(anchor - run, anchor))
            anchor -= run + 1
        return frozenset(steps)

    def skip(self, states: list[StepForecastState], t: float, accumulated: float) -> tuple[bool, float]:
        """Whether to skip a candidate step at timestep ``t`` after skips that accumulated ``accumulated`` predicted
        error, and the new accumulated error."""
        if not states or any(s.computed < 3 or s.error is None or not s.forecast.ready for s in states):
            return False, 0.0
        predicted = 0.0
        for s in states:
            if s.forecast.interval() <= 0:
                return False, 0.0
            h = _distance(s.forecast, t)
            predicted = max(predicted, s.error * h * h)
        total = accumulated + predicted
        return total <= self.tolerance, total


def _normalised_intervals(num_steps: int, timesteps) -> list[float]:
    """Each step's timestep interval (to the next step's timestep, the last to 0) as a fraction of the first
    timestep; even intervals when the timesteps are unknown or do not fit."""
    if timesteps is not None and len(timesteps) == num_steps:
        ts = [float(x) for x in timesteps] + [0.0]
        if ts[0] > 0 and all(math.isfinite(x) for x in ts):
            return [abs(ts[k] - ts[k + 1]) / ts[0] for k in range(num_steps)]
    return [1.0 / num_steps] * num_steps


class StepForecastHook(ModelHook):
    """Returns the forecast of the transformer's output at budget-0 steps (and, with ``auto``, decides them).

    The decisions and the history updates run eagerly (:meth:`prepare_call`, called by the step tracker before the
    blocks prepare, and :meth:`post_forward`); the traced forward only branches on one bool, so ``torch.compile``
    compiles at most a skipping and a computing variant.
    """

    _is_stateful = True

    def __init__(self, runtime: AccelRuntime, order: int = 1, horizon: float | None = 2.0, lazy: bool = True):
        # The fitted damping λ holds a forecast back where the line overshoots; the cap (two history intervals) only
        # bounds very long runs of skips (13 in a row: 14.8 dB uncapped, 19.8 dB capped; no change on shorter runs).
        super().__init__()
        self.runtime = runtime
        self.lazy = lazy  # keep outputs only when a later step is skipped (the state then depends on future budgets)
        self.state_manager = ContextStateManager(StepForecastState, (order, horizon))
        self.skip = False  # this call returns the forecast
        self.forecast_sample: torch.Tensor | None = None
        self.template = "tensor"
        self._decided_step = -1  # auto: the step whose decision is made (shared by the CFG branches of a step)
        self._skip_step = False
        self._accumulated = 0.0
        self._candidates: frozenset[int] = frozenset()  # auto: this run's candidate skips

    def initialize_hook(self, module):
        self.runtime.add_call_preparer(self.prepare_call, first=True)  # the blocks prepare with its decision
        return module

    def deinitalize_hook(self, module):  # diffusers' spelling: HookRegistry.remove_hook calls `deinitalize_hook`
        self.runtime.remove_call_preparer(self.prepare_call)
        return module

    @torch.compiler.disable
    def prepare_call(self) -> None:
        rt = self.runtime
        state = self.state_manager.get_state()
        if rt.step <= state.step:
            state.reset()  # a new run
        if rt.auto is not None:
            self._decide(rt)
        self.skip = rt.budget <= 0.0 and state.forecast.ready and state.shape is not None
        self.forecast_sample = None
        if self.skip:
            if rt.current is not None:
                rt.current.skipped = True
            sample = _damped_predict(state, rt.timestep)  # float32; the model's dtype again below
            self.forecast_sample = sample.to(state.forecast.dtype).reshape(state.shape)
            self.template = state.template

    def new_forward(self, module, *args, **kwargs):
        if self.skip:
            return _wrap(self.template, self.forecast_sample)
        return self.fn_ref.original_forward(*args, **kwargs)

    @torch.compiler.disable
    def post_forward(self, module, output):
        if self.skip:
            return output
        rt = self.runtime
        state = self.state_manager.get_state()
        if self.lazy and rt.auto is None and not rt.skip_ahead():  # no later step forecasts from this output: keep nothing
            state.step = rt.step
            return output
        sample, template = _output_sample(output)
        if state.shape is not None and state.shape != sample.shape:
            state.reset()
        flat = sample.detach().reshape(sample.shape[0], 1, -1)
        residual = None
        if state.computed >= 2 and state.forecast.value.shape == flat.shape:
            increment = state.forecast.increment(rt.timestep)  # the Taylor step, once for the error and the fit
            y32 = flat.float()  # converted once (a no-op for a float32 model)
            residual = y32 - state.forecast.value  # y − y_last, also the history's next difference
            if rt.auto is not None:  # the error of the forecast as it stood (before this step refits λ)
                state.error = _normalised_error(state, y32, rt.timestep, increment, residual)
            state.damping = _fit_damping(state.forecast, flat, rt.timestep, state.damping, increment, residual)
            state.fit_distance = max(_distance(state.forecast, rt.timestep), 1e-6)
        state.template, state.shape = template, sample.shape
        state.forecast.update(flat, rt.timestep, residual)
        state.step = rt.step
        state.computed += 1
        return output

    def _decide(self, rt: AccelRuntime) -> None:
        if rt.step < self._decided_step or rt.step == 0 or self._decided_step < 0:  # a new run (or the first call)
            self._decided_step, self._accumulated = -1, 0.0
            self._candidates = rt.auto.candidates(rt.num_steps, rt.timesteps)
        if rt.step != self._decided_step:
            self._skip_step, total = False, 0.0
            if rt.step in self._candidates:
                states = list(self.state_manager._state_cache.values())
                self._skip_step, total = rt.auto.skip(states, rt.timestep, self._accumulated)
            self._accumulated = total if self._skip_step else 0.0
            self._decided_step = rt.step
        if rt.budgets is not None and rt.step < len(rt.budgets):
            rt.budgets[rt.step] = 0.0 if self._skip_step else 1.0
        if rt.current is not None:
            rt.current.budget = rt.budget

    def reset_state(self, module):
        self.state_manager.reset()
        self.skip, self.forecast_sample = False, None
        self._decided_step, self._accumulated = -1, 0.0
        return module


def _distance(forecast: TensorForecast, t: float) -> float:
    """How far ``t`` lies from the last computed step, in units of the last interval between computed steps (1 when
    there is no interval yet)."""
    interval = forecast.interval()
    return abs(t - forecast.times[0]) / interval if interval > 0 else 1.0


def _damping_at(state: StepForecastState, t: float) -> float:
    """The fraction of the Taylor step taken at ``t``: ``state.damping`` at the distance it was fitted at, shrinking
    linearly towards 1 (the full step) nearer, so the deviation from the line grows with the square of the distance:
    ``1 − (1 − λ) · h / h_fit``, in [0, 1]."""
    lam = 1.0 - (1.0 - state.damping) * _distance(state.forecast, t) / state.fit_distance
    return min(max(lam, 0.0), 1.0)


def _damped_predict(state: StepForecastState, t: float) -> torch.Tensor:
    """The skipped-step forecast at ``t`` (float32): the last output moved by the fraction :func:`_damping_at` of
    the Taylor step."""
    return state.forecast.predict(t, torch.float32, scale=_damping_at(state, t))


def _fit_damping(forecast: TensorForecast, y: torch.Tensor, t: float, previous: float,
                 increment: torch.Tensor | None = None, residual: torch.Tensor | None = None) -> float:
    """The λ in [0, 1] for which ``y_last + λ · (taylor(t) − y_last)`` is closest (least squares) to the output ``y``
    just computed at ``t``; ``previous`` when the Taylor step is zero (nothing to fit). ``increment``
    (``taylor(t) − y_last``) and ``residual`` (``y − y_last``, float32) when already computed."""
    step = forecast.increment(t) if increment is None else increment
    norm = float(torch.dot(step.flatten(), step.flatten()))
    if not math.isfinite(norm) or norm <= 0.0:
        return previous
    r = y.float() - forecast.value if residual is None else residual
    lam = float(torch.dot(r.flatten(), step.flatten())) / norm
    return min(max(lam, 0.0), 1.0) if math.isfinite(lam) else previous


def _normalised_error(state: StepForecastState, y32: torch.Tensor, t: float, increment: torch.Tensor,
                      residual: torch.Tensor) -> float:
    """Relative error of the (damped) forecast of the output ``y32`` (float32) at ``t``, divided by the squared
    horizon in history intervals: ``‖λ_h · increment − residual‖ / ‖y‖ / h²`` (``increment``: ``taylor(t) − y_last``,
    ``residual``: ``y − y_last``)."""
    h = _distance(state.forecast, t)
    err = float(torch.add(residual, increment, alpha=-_damping_at(state, t)).norm() / y32.norm().clamp_min(1e-12))
    return err / max(h * h, 1e-12)


def _wrap(template: str, sample: torch.Tensor):
    if template == "tensor":
        return sample
    if template == "tuple":
        return (sample,)
    return Transformer2DModelOutput(sample=sample)


def _output_sample(output) -> tuple[torch.Tensor, str]:
    """The predicted sample of a transformer's output (tensor, ``(sample,)`` tuple or ``Transformer2DModelOutput``)
    and which of the three it was."""
    if torch.is_tensor(output):
        return output, "tensor"
    if isinstance(output, tuple) and len(output) == 1 and torch.is_tensor(output[0]):
        return output[0], "tuple"
    if isinstance(output, Transformer2DModelOutput):
        return output.sample, "output"
    raise TypeError(f"Whole-step reuse cannot forecast a transformer output of type {type(output).__name__}; "
                    f"use budgets > 0 for this model.")
