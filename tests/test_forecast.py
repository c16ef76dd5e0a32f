"""Forecast caches (per-token Taylor along the timestep axis) and whole-step reuse (budget-0 steps)."""

import dataclasses

import pytest
import torch

import vdit_accel
from vdit_accel import AccelerationConfig, BudgetSchedule, TokenSelectionConfig
from vdit_accel.methods.forecast import TaylorForecast

from .conftest import run_pipe


def _rows(y, index):
    return y.gather(1, index.unsqueeze(-1).expand(-1, -1, y.shape[-1]))


@pytest.mark.parametrize("horizon", [None, 10.0])
def test_first_order_forecast_is_exact_on_a_signal_linear_in_the_timestep(horizon):
    torch.manual_seed(0)
    a, b = torch.randn(2, 12, 5), torch.randn(2, 12, 5)
    signal = lambda t: a + b * t  # noqa: E731
    f = TaylorForecast(order=1, horizon=horizon)
    f.update(signal(1000.0), 1000.0)
    f.update(signal(960.0), 960.0)
    index = torch.tensor([[0, 3, 7], [1, 2, 11]])  # each row keeps its own last computed timesteps
    f.update(_rows(signal(930.0), index), 930.0, index)
    torch.testing.assert_close(f.predict(900.0), signal(900.0), rtol=1e-5, atol=1e-4)


def test_second_order_forecast_is_exact_on_a_quadratic_signal():
    torch.manual_seed(0)
    a, b, c = torch.randn(3, 1, 6, 4).unbind(0)
    signal = lambda t: a + b * t + c * t * t / 1000  # noqa: E731
    f = TaylorForecast(order=2, horizon=None)
    for t in (1000.0, 950.0, 875.0):
        f.update(signal(t), t)
    torch.testing.assert_close(f.predict(800.0), signal(800.0), rtol=1e-4, atol=1e-3)


def test_a_row_computed_once_is_held_and_repeated_timesteps_are_safe():
    f = TaylorForecast(order=1)
    x = torch.randn(1, 4, 3)
    f.update(x, 500.0)
    torch.testing.assert_close(f.predict(400.0), x)
    f.update(x + 1, 500.0)  # the same timestep again (a direct transformer call): no division by zero
    assert torch.isfinite(f.predict(400.0)).all()


def test_horizon_caps_the_extrapolation():
    f = TaylorForecast(order=1, horizon=1.0)
    f.update(torch.zeros(1, 1, 1), 1000.0)
    f.update(torch.ones(1, 1, 1), 990.0)  # slope: +1 per -10 timestep
    assert f.predict(980.0).item() == pytest.approx(2.0)
    assert f.predict(900.0).item() == pytest.approx(2.0)  # capped at one interval


def test_skipped_step_forecast_fits_its_damping_and_is_exact_on_a_linear_output():
    """The skipped-step forecast moves the last output by a fitted fraction λ of the Taylor step: λ is the
    least-squares factor that best predicted the output just computed (1 on a line, so skips are exact there),
    clipped to [0, 1], and kept when there is nothing to fit."""
    from vdit_accel.methods.step_forecast import StepForecastState, _damped_predict, _fit_damping

    torch.manual_seed(0)
    a, b = torch.randn(1, 1, 40), torch.randn(1, 1, 40)
    line = lambda t: a + b * t / 1000  # noqa: E731
    state = StepForecastState(order=1)
    for t in (1000.0, 950.0):
        state.forecast.update(line(t), t)
    assert _fit_damping(state.forecast, line(900.0), 900.0, 0.5) == pytest.approx(1.0, abs=1e-5)
    state.damping = 1.0
    torch.testing.assert_close(_damped_predict(state, 880.0), line(880.0), rtol=1e-5, atol=1e-5)
    last = line(950.0)
    step = state.forecast.predict(900.0) - last
    assert _fit_damping(state.forecast, last + 0.3 * step, 900.0, 0.5) == pytest.approx(0.3, abs=1e-5)
    assert _fit_damping(state.forecast, last - step, 900.0, 0.5) == 0.0  # overshooting the other way: reuse
    assert _fit_damping(state.forecast, last + 3 * step, 900.0, 0.5) == 1.0
    assert _fit_damping(state.forecast, line(950.0), 950.0, 0.7) == 0.7  # the same timestep: no step to fit
    state.damping = 0.0
    torch.testing.assert_close(_damped_predict(state, 800.0), last)


def test_budget_zero_step_runs_no_block_and_takes_the_forecast():
    from vdit_accel.testing import build_tiny_wan_pipeline

    pipe = build_tiny_wan_pipeline()
    calls = []
    for block in pipe.transformer.blocks:
        block.register_forward_pre_hook(lambda m, a: calls.append(1))
    pipe.enable_acceleration(schedule=[1.0, 1.0, 0.0, 1.0])
    out = run_pipe(pipe, steps=4)
    per_step = {s["step"]: s for s in vdit_accel.summary(pipe)["steps"]}
    assert per_step[2]["ffn_tokens"] == 0 and per_step[2]["attention_queries"] == 0
    assert per_step[2]["skipped"] == per_step[2]["calls"] == 2  # both CFG branches forecast
    assert len(calls) == 3 * 2 * len(pipe.transformer.blocks)  # 3 computed steps x 2 branches x blocks
    assert torch.isfinite(out).all()


def test_budget_zero_on_the_first_call_runs_dense():
    from vdit_accel.testing import build_tiny_wan_pipeline

    pipe = build_tiny_wan_pipeline()
    dense = run_pipe(pipe, steps=2)
    pipe.enable_acceleration(schedule=BudgetSchedule(budgets=[0.0, 1.0]))
    out = run_pipe(pipe, steps=2)
    torch.testing.assert_close(out, dense, rtol=1e-4, atol=1e-5)  # step 0 has nothing to forecast from
    assert vdit_accel.summary(pipe)["budgets"][0] == 1.0


@pytest.mark.parametrize("cache", ["forecast", "output", "residual"])
@pytest.mark.parametrize("cache_dtype", [None, "bfloat16"])
def test_cache_modes_and_dtypes_run_token_selected_and_skipped_steps(cache, cache_dtype):
    from vdit_accel.testing import build_tiny_wan_pipeline

    pipe = build_tiny_wan_pipeline()
    dense = run_pipe(pipe, steps=6)
    pipe.enable_acceleration(AccelerationConfig(
        schedule=[1, 1, 0.5, 0.0, 0.5, 1], token_selection=TokenSelectionConfig(cache=cache, cache_dtype=cache_dtype)))
    out = run_pipe(pipe, steps=6)
    assert torch.isfinite(out).all() and not torch.equal(out, dense)
    pipe.disable_acceleration()
    torch.testing.assert_close(run_pipe(pipe, steps=6), dense, rtol=0, atol=0)


def test_planned_budgets_are_the_computed_ones():
    """The first call of each CFG branch is dense, so the plan says so: predicted and computed token fractions agree."""
    from vdit_accel.testing import build_tiny_wan_pipeline

    pipe = build_tiny_wan_pipeline()
    pipe.enable_acceleration(schedule=[0.5, 0.5, 0.5, 1.0, 0.0, 1.0])
    run_pipe(pipe, steps=6)
    s = vdit_accel.summary(pipe)
    assert s["budgets"][0] == 1.0
    for step in s["steps"]:
        planned = s["budgets"][step["step"]]
        assert step["ffn_tokens"] == pytest.approx(planned * step["dense_tokens"], abs=step["calls"] * 4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(cache="stale"), "cache"),
    (dict(forecast_order=3), "forecast_order"),
    (dict(cache_dtype="int8"), "cache_dtype"),
    (dict(forecast_horizon=-1.0), "forecast_horizon"),
])
def test_forecast_settings_are_validated(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TokenSelectionConfig(**kwargs)


@pytest.mark.parametrize("builder", ["build_tiny_wan_pipeline", "build_tiny_cogvideox_pipeline",
                                     "build_tiny_hunyuan_video_pipeline", "build_tiny_ltx_pipeline",
                                     "build_tiny_mochi_pipeline"])
def test_auto_schedule_skips_steps_and_decides_deterministically(builder):
    """schedule="auto" with its defaults (no per-model setting) decides at run time from the forecast error the run
    shows: it runs on every family, skips steps and runs fewer tokens than dense (a skipped step runs none, a computed
    one all of them), and two runs decide the same budgets."""
    from vdit_accel import testing

    pipe = getattr(testing, builder)()
    pipe.enable_acceleration(schedule="auto")
    budgets, steps = [], []
    for _ in range(2):
        out = run_pipe(pipe, steps=10, output_type="latent")  # decisions only: no VAE decode (LTX's takes ~50 s)
        budgets.append(list(vdit_accel.summary(pipe)["budgets"]))
        steps.append(vdit_accel.get_runtime(pipe).summary())
    assert torch.isfinite(out).all()
    assert budgets[0] == budgets[1] and steps[0] == steps[1]
    assert set(budgets[0]) == {0.0, 1.0} and budgets[0][:3] == [1.0] * 3  # the warm-up: a quarter of 10 steps
    per_step = steps[0]["steps"]
    for b, s in zip(budgets[0], per_step):
        assert s["skipped"] == (s["calls"] if b == 0.0 else 0)
        assert s["ffn_tokens"] == (0 if b == 0.0 else s["dense_tokens"]) and s["dense_tokens"] > 0
    assert steps[0]["computed_token_fraction"] == pytest.approx(sum(budgets[0]) / len(budgets[0]))
    assert steps[0]["computed_token_fraction"] < 1.0
    # where skips may fall is the same on every family: the last step skipped, the one before it computed, single
    # skips alternating back to the warm-up; a forecast's error is first measured at the third computed call, so step
    # 3 is the first skip (this tolerance allows every skip)
    pipe.disable_acceleration()
    pipe.enable_acceleration(schedule=BudgetSchedule.auto(tolerance=10.0))
    run_pipe(pipe, steps=10, output_type="latent")
    assert vdit_accel.summary(pipe)["budgets"] == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]


def test_summary_budgets_are_a_snapshot_of_the_run():
    """summary() copies the budgets: a later auto run, which rewrites the runtime's list, leaves it alone."""
    from vdit_accel.testing import build_tiny_wan_pipeline

    pipe = build_tiny_wan_pipeline()
    pipe.enable_acceleration(schedule=BudgetSchedule.auto(tolerance=10.0))
    run_pipe(pipe, steps=10, output_type="latent")
    first = vdit_accel.summary(pipe)["budgets"]
    kept = list(first)
    runtime = vdit_accel.get_runtime(pipe)
    runtime.auto = dataclasses.replace(runtime.auto, tolerance=0.0)  # the same runtime now computes every step
    run_pipe(pipe, steps=10, output_type="latent")
    assert vdit_accel.summary(pipe)["budgets"] == [1.0] * 10
    assert first == kept and 0.0 in first


def test_auto_warm_up_is_a_fraction_of_the_steps():
    """The default warm-up is a quarter of the steps (rounded up), an explicit one a number of steps; the first
    skip is the first step after it that the plan, laid out from the end, leaves to a forecast."""
    from vdit_accel.testing import build_tiny_wan_pipeline

    pipe = build_tiny_wan_pipeline()
    for schedule, steps, warm, first_skip in ((BudgetSchedule.auto(tolerance=10.0), 20, 5, 5),
                                              (BudgetSchedule.auto(tolerance=10.0), 30, 8, 9),
                                              (BudgetSchedule.auto(tolerance=10.0), 10, 3, 3),
                                              (BudgetSchedule.auto(tolerance=10.0, warmup=8), 20, 8, 9),
                                              (BudgetSchedule.auto(tolerance=10.0, warmup=9), 20, 9, 9)):
        pipe.enable_acceleration(schedule=schedule)
        run_pipe(pipe, steps=steps, output_type="latent")
        budgets = list(vdit_accel.summary(pipe)["budgets"])
        pipe.disable_acceleration()
        assert budgets[:warm] == [1.0] * warm and budgets.index(0.0) == first_skip, (steps, budgets)
    with pytest.raises(ValueError, match=r"auto\(warmup=...\)` got 1"):
        BudgetSchedule.auto(warmup=1)


@pytest.mark.parametrize("steps, settings, expected", [
    # the tiny Wan's flow schedule (shift 7): one skip in a row before 45 % of the steps, then runs of up to two while
    # a run spans at most 15 % of the timestep range; the last step alone, the one before it computed
    (50, {}, "DDDDDDDDDDDDD.D.D.D.D.D..D..D..D..D..D..D..D..D.D."),
    (50, {"single_skips_until": 0.0}, "DDDDDDDDDDDDDD..D..D..D..D..D..D..D..D..D..D..D.D."),
    (50, {"single_skips_until": 1.0}, "DDDDDDDDDDDDD" + ".D" * 18 + "."),
    (50, {"max_skips": 0}, "D" * 50),  # no skips, in either part
    (30, {}, "DDDDDDDDD.D.D.D..D..D..D..D.D."),
    (20, {}, "DDDDD.D.D.D..D..D.D."),  # the late pairs span more than 15 % of the range: single skips there
    (20, {"max_run_span": 0.0}, "DDDDD.D.D.D.D.D.D.D."),
    (20, {"max_run_span": 1.0}, "DDDDDD.D.D..D..D..D."),
])
def test_auto_runs_of_skips_are_single_in_the_first_half(steps, settings, expected):
    """The plan laid out from the end: before the fraction ``single_skips_until`` of the steps a run of skips is one
    step long, after it up to ``max_skips`` while it spans at most ``max_run_span`` of the scheduler's timestep range;
    the last step is skipped alone."""
    from vdit_accel.testing import build_tiny_wan_pipeline

    pipe = build_tiny_wan_pipeline()
    pipe.enable_acceleration(schedule=BudgetSchedule.auto(tolerance=10.0, **settings))
    run_pipe(pipe, steps=steps, output_type="latent")
    budgets = vdit_accel.summary(pipe)["budgets"]
    assert "".join("D" if b == 1.0 else "." for b in budgets) == expected


def test_auto_plan_follows_the_schedulers_intervals():
    """The same step count gives different plans on different timestep spacings: runs of two where the intervals are
    short, single skips where they are long; without timesteps (steps driven by hand) the intervals are even."""
    from vdit_accel.methods.step_forecast import AutoDecider

    plan = lambda ts: "".join("." if k in AutoDecider().candidates(20, ts) else "D" for k in range(20))  # noqa: E731
    even = [1000.0 - 50.0 * k for k in range(20)]
    late_long = [1000.0 * (1 - (k / 20) ** 2) for k in range(20)]  # intervals growing towards the end
    assert plan(even) == plan(None) == "DDDDDD.D.D..D..D..D."
    assert plan(late_long) == "DDDDD.D.D..D..D.D.D."


@pytest.mark.parametrize("name", ["single_skips_until", "max_run_span"])
@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), True, "half"])
def test_auto_fractions_are_validated(name, value):
    with pytest.raises(ValueError, match=rf"auto\({name}=\.\.\.\)"):
        BudgetSchedule.auto(**{name: value})


def test_auto_unknown_setting_is_refused():
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['speedup'\].*max_run_span"):
        BudgetSchedule.auto(speedup=2.0)


def test_a_skipped_step_returns_the_models_dtype():
    from vdit_accel.testing import build_tiny_wan_pipeline

    pipe = build_tiny_wan_pipeline().to(torch.bfloat16)
    dtypes = []
    pipe.transformer.register_forward_hook(lambda m, a, out: dtypes.append(out[0].dtype))
    pipe.enable_acceleration(schedule=[1.0, 1.0, 1.0, 0.0, 1.0])
    run_pipe(pipe, steps=5, output_type="latent")
    assert vdit_accel.summary(pipe)["steps"][3]["skipped"] == 2
    assert set(dtypes) == {torch.bfloat16}, dtypes
