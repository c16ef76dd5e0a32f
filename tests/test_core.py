"""Core plugin behaviour on tiny offline pipelines of the real diffusers classes (Wan, CogVideoX with/without RoPE)."""

import math

import pytest
import torch
from diffusers import FirstBlockCacheConfig
from diffusers.hooks import HookRegistry

import vdit_accel
from vdit_accel import AccelerationConfig, BudgetSchedule, TokenSelectionConfig
from vdit_accel.runtime.handle import get_handle

from .conftest import hook_names, processors, run_pipe




# ------------------------------------------------------------------------------------------------------ equivalence
@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "nocfg"])
@pytest.mark.parametrize("batch", [1, 2], ids=["b1", "b2"])
def test_budget_one_equals_dense(tiny_pipe, cfg, batch):
    dense = run_pipe(tiny_pipe, steps=4, cfg=cfg, batch=batch)
    tiny_pipe.enable_acceleration(schedule=[1.0] * 4)
    accel = run_pipe(tiny_pipe, steps=4, cfg=cfg, batch=batch)
    torch.testing.assert_close(accel, dense, atol=1e-5, rtol=1e-5)


def test_disable_is_bit_identical(tiny_pipe):
    before_procs = processors(tiny_pipe.transformer)
    reference = run_pipe(tiny_pipe, steps=5)
    tiny_pipe.enable_acceleration(schedule=[1.0, 0.5, 0.5, 0.5, 1.0])
    accelerated = run_pipe(tiny_pipe, steps=5)
    assert not torch.equal(accelerated, reference)  # budget 0.5 really changed the computation
    tiny_pipe.disable_acceleration()
    assert not vdit_accel.is_accelerated(tiny_pipe)
    assert processors(tiny_pipe.transformer) == before_procs
    assert not any(n.startswith("vdit_accel") for n in hook_names(tiny_pipe.transformer))
    assert torch.equal(run_pipe(tiny_pipe, steps=5), reference)


def test_method_and_function_forms_are_the_same(tiny_pipe):
    tiny_pipe.enable_acceleration(schedule=[1.0, 0.5, 0.5, 1.0])
    a = run_pipe(tiny_pipe, steps=4)
    tiny_pipe.disable_acceleration()
    vdit_accel.enable_acceleration(tiny_pipe, AccelerationConfig(schedule=[1.0, 0.5, 0.5, 1.0]))
    b = run_pipe(tiny_pipe, steps=4)
    vdit_accel.disable_acceleration(tiny_pipe)
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------------ token counts
@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "nocfg"])
@pytest.mark.parametrize("batch", [1, 2], ids=["b1", "b2"])
@pytest.mark.parametrize("size", [(64, 64, 17), (48, 80, 9)], ids=["grid5x4x4", "odd-grid3x3x5"])
def test_budget_half_cuts_token_counts(tiny_pipe, cfg, batch, size):
    height, width, frames = size
    budgets = [1.0, 0.5, 0.5, 0.5, 1.0]
    tiny_pipe.enable_acceleration(schedule=budgets)
    run_pipe(tiny_pipe, steps=5, cfg=cfg, batch=batch, height=height, width=width, num_frames=frames)
    info = vdit_accel.summary(tiny_pipe)
    rt = vdit_accel.get_runtime(tiny_pipe)
    f, h, w = rt.grid
    n = f * h * w
    n_blocks = len(tiny_pipe.transformer.config.num_layers * [0])
    samples = batch * (2 if cfg else 1)  # CFG doubles the samples: two calls (Wan) or a 2B batch (CogVideoX)
    assert [s["budget"] for s in info["steps"]] == budgets
    for s in info["steps"]:
        k = n if s["budget"] == 1.0 else math.ceil(s["budget"] * n)
        expected = k * n_blocks * samples
        assert s["attention_queries"] == expected, s
        assert s["ffn_tokens"] == expected, s
        assert s["dense_tokens"] == n * n_blocks * samples
        if "wan" in type(tiny_pipe).__name__.lower():
            assert s["cross_attention_tokens"] == expected
    assert info["computed_token_fraction"] < 0.8


def test_odd_grid_is_really_odd(tiny_pipe):
    tiny_pipe.enable_acceleration(schedule=[1.0, 0.5])
    run_pipe(tiny_pipe, steps=2, height=48, width=80, frames=9)
    assert vdit_accel.get_runtime(tiny_pipe).grid == (3, 3, 5)


@pytest.mark.parametrize("cache", ["residual", "output", "forecast"])
def test_cache_modes_run_and_differ(cache):
    from vdit_accel.testing import build_tiny_wan_pipeline

    pipe = build_tiny_wan_pipeline()
    dense = run_pipe(pipe, steps=6)
    pipe.enable_acceleration(AccelerationConfig(schedule=[1, 1, 0.4, 0.4, 0.4, 1],
                                                token_selection=TokenSelectionConfig(cache=cache)))
    out = run_pipe(pipe, steps=6)
    assert torch.isfinite(out).all()
    assert not torch.equal(out, dense)


# ------------------------------------------------------------------------------------------------------ CFG caches
def test_wan_keeps_separate_caches_per_cfg_branch_and_frees_them_after_the_run():
    from vdit_accel.testing import build_tiny_wan_pipeline

    pipe = build_tiny_wan_pipeline()
    pipe.enable_acceleration(schedule=[1.0, 0.5, 0.5])
    hook = pipe.transformer.blocks[0]._diffusers_hook.get_hook("vdit_accel_token_selection")
    seen = {}

    def inspect_caches(pipeline, step, timestep, callback_kwargs):
        cache = hook.state_manager._state_cache
        seen[step] = {name: state.reuse_source.clone() for name, state in cache.items()}
        return callback_kwargs

    run_pipe(pipe, steps=3, callback_on_step_end=inspect_caches)
    assert set(seen[1]) == {"cond", "uncond"}
    assert not torch.equal(seen[1]["cond"], seen[1]["uncond"])
    assert hook.state_manager._state_cache == {}  # pipeline's maybe_free_model_hooks() reset the caches


# ------------------------------------------------------------------------------------------------------ bad input
def _assert_untouched(pipe, procs):
    assert not vdit_accel.is_accelerated(pipe)
    assert processors(pipe.transformer) == procs
    assert not any(n.startswith("vdit_accel") for n in hook_names(pipe.transformer))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(schedule=[1.0, 1.5, 0.5]), ValueError, r"budgets\[1\]` = 1.5 is outside \[0, 1\]"),
        (dict(schedule=[1.0, -0.1]), ValueError, r"budgets\[1\]` = -0.1"),
        (dict(schedule=[]), ValueError, "is empty"),
        (dict(schedule=["a"]), TypeError, r"budgets\[0\]"),
        (dict(speedup=0.5), ValueError, "speedup"),
        (dict(speedup=2.0, schedule=[1.0]), ValueError, "either `schedule` or `speedup`"),
        (dict(schedule=42), TypeError, "schedule"),
        (dict(token_selection=TokenSelectionConfig), TypeError, "token_selection"),
    ],
)
def test_bad_config_raises_before_any_change(kwargs, error, match):
    from vdit_accel.testing import build_tiny_wan_pipeline

    pipe = build_tiny_wan_pipeline()
    procs = processors(pipe.transformer)
    with pytest.raises(error, match=match):
        pipe.enable_acceleration(**kwargs)
    _assert_untouched(pipe, procs)


def test_bad_token_selection_config_fields():
    with pytest.raises(ValueError, match="TokenSelectionConfig.cache"):
        TokenSelectionConfig(cache="raw")
    with pytest.raises(ValueError, match="w_beta"):
        TokenSelectionConfig(w_beta=-1)
    with pytest.raises(ValueError, match="min_tokens"):
        TokenSelectionConfig(min_tokens=0)


def test_corrupt_schedule_file(tmp_path):
    from vdit_accel.testing import build_tiny_wan_pipeline

    pipe = build_tiny_wan_pipeline()
    procs = processors(pipe.transformer)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="Corrupt schedule file .*bad.json"):
        pipe.enable_acceleration(schedule=str(bad))
    bad.write_text('{"budgets": [1.0, 2.0]}')
    with pytest.raises(ValueError, match=r"Corrupt schedule in .*bad.json.*budgets\[1\]"):
        pipe.enable_acceleration(schedule=str(bad))
    bad.write_text('{"budgetz": [1.0]}')
    with pytest.raises(ValueError, match="unknown field"):
        pipe.enable_acceleration(schedule=str(bad))
    with pytest.raises(FileNotFoundError, match="Schedule file not found"):
        pipe.enable_acceleration(schedule=str(tmp_path / "missing.json"))
    _assert_untouched(pipe, procs)


def test_schedule_length_mismatch_raises_before_denoising():
    from vdit_accel.testing import build_tiny_wan_pipeline

    pipe = build_tiny_wan_pipeline()
    pipe.enable_acceleration(schedule=[1.0, 0.5, 1.0])
    calls = []
    pipe.transformer.blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="has 3 steps but the pipeline runs num_inference_steps=5"):
        run_pipe(pipe, steps=5)
    assert calls == []  # no transformer block ran


def test_enable_twice_is_an_error():
    from vdit_accel.testing import build_tiny_wan_pipeline

    pipe = build_tiny_wan_pipeline()
    pipe.enable_acceleration()
    procs = processors(pipe.transformer)
    with pytest.raises(RuntimeError, match="already enabled"):
        pipe.enable_acceleration(speedup=2.0)
    assert processors(pipe.transformer) == procs  # the first acceleration is intact
    pipe.disable_acceleration()
    pipe.enable_acceleration(speedup=2.0)  # fine after disabling


def test_enable_after_enable_cache_is_an_error_and_vice_versa():
    from vdit_accel.testing import build_tiny_wan_pipeline

    pipe = build_tiny_wan_pipeline()
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    procs = processors(pipe.transformer)
    with pytest.raises(RuntimeError, match="diffusers cache enabled.*disable_cache"):
        pipe.enable_acceleration()
    assert not vdit_accel.is_accelerated(pipe) and processors(pipe.transformer) == procs
    pipe.transformer.disable_cache()

    pipe.enable_acceleration(schedule=[1.0, 0.5, 1.0])
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    with pytest.raises(RuntimeError, match="cache .* was enabled on the transformer after vdit-accel"):
        run_pipe(pipe, steps=3)


def test_unsupported_pipeline_lists_supported():
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=1,
                                        sample_size=8, patch_size=2, num_embeds_ada_norm=10)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4)
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler())
    with pytest.raises(ValueError, match="does not support DiTTransformer2DModel. Supported transformers: .*"
                                         "CogVideoXTransformer3DModel.*WanTransformer3DModel"):
        pipe.enable_acceleration()
    assert get_handle(transformer) is None


# ------------------------------------------------------------------------------------------------------ schedules
def test_default_schedule_dense_first_and_last():
    assert BudgetSchedule.default().resolve(10) == [1.0, 1.0] + [0.5] * 7 + [1.0]
    assert BudgetSchedule.default().resolve(3) == [1.0, 0.5, 1.0]
    assert BudgetSchedule.dense().resolve(4) == [1.0] * 4


@pytest.mark.parametrize("overhead", [0.0, 1.0], ids=["selection-pays", "selection-does-not-pay"])
def test_speedup_target_turns_into_schedule(overhead):
    from vdit_accel.cost import CostModel
    from vdit_accel.schedule import predicted_speedup

    cost = CostModel(budgets=[0.0, 0.999, 1.0], costs=[min(1.0, 0.05 + overhead), 1.0, 1.0])
    for target in (1.5, 2.0, 2.5):
        budgets = BudgetSchedule.for_speedup(target).resolve(50, cost)
        assert budgets[0] == 1.0
        assert target <= predicted_speedup(budgets, cost) <= target * 1.1
        if overhead:  # token selection does not pay: dense and skipped steps only
            assert set(budgets) == {0.0, 1.0}
        if 0.0 in budgets:  # with skipped steps the last step is planned like the others (a skip at 2x+) ...
            assert target < 2.0 or budgets[-1] != 1.0
            kept = BudgetSchedule.for_speedup(target, dense_last=True).resolve(50, cost)  # ... unless asked for
            assert kept[-1] == 1.0 and target <= predicted_speedup(kept, cost) <= target * 1.1
        else:  # token-selected steps only: the last step stays dense
            assert budgets[-1] == 1.0
    with pytest.raises(ValueError, match="`dense_last` must be True, False or None"):
        BudgetSchedule(speedup=2.0, dense_last="yes")
    with pytest.raises(ValueError, match="not reachable"):
        BudgetSchedule.for_speedup(30.0).resolve(10, cost)
    with pytest.raises(ValueError, match="not reachable at any step count"):
        BudgetSchedule.for_speedup(1e9)


def test_schedule_json_roundtrip(tmp_path):
    s = BudgetSchedule(budgets=[1.0, 0.5, 0.4, 1.0], metadata=dict(model="tiny", height=64))
    path = tmp_path / "s.json"
    s.save(path)
    loaded = BudgetSchedule.load(path)
    assert loaded.budgets == s.budgets and loaded.metadata["model"] == "tiny"
    with pytest.raises(ValueError, match="searched for height=64 but this run uses height=128"):
        loaded.check_matches(height=128)
