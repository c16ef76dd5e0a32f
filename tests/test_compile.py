"""torch.compile (inductor, CPU) on an accelerated pipeline: same output as eager from the first call on, a bounded
number of graphs over a run whose budgets change every step, no graph break inside the blocks.

Run: OMP_NUM_THREADS=1 python -m pytest tests/test_compile.py -q   (about a minute per compile on a free core)
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
from diffusers.models.attention_dispatch import AttentionBackendName

import vdit_accel
from vdit_accel import TokenSelectionConfig, testing
from vdit_accel.methods.token_counts import selected_count

# budgets that change every step, five distinct token counts (16 video tokens: k = 8, 8, 5, 12, 4, 7)
CHANGING = [1.0, 0.5, 0.45, 0.3, 0.7, 0.25, 0.4, 1.0]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    # Count graphs as on a fresh checkout (CI): local profile-guided dynamic shapes and the on-disk graph caches
    # remember earlier processes, and a warm machine then compiles fewer graphs and hides restarted traces.
    torch._dynamo.reset()
    with torch._dynamo.config.patch(automatic_dynamic_local_pgo=False), \
            torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        yield
    torch._dynamo.reset()


def _run(pipe, steps, seed=0):
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        return pipe(prompt=["a dog dancing"], negative_prompt=["blurry"], height=32, width=64, num_frames=5,
                    num_inference_steps=steps, max_sequence_length=16, output_type="latent",
                    generator=torch.Generator().manual_seed(seed), guidance_scale=6.0).frames


@pytest.mark.parametrize("how", ["in_place", "wrapper"])
def test_compile_after_enable_equals_eager_from_the_first_call(how):
    # Two blocks: the first-call bug needed one block's cached output and the next block's cached input to be merged
    # into one buffer by inductor, then written in place.
    pipe = testing.build_tiny_wan_pipeline(num_layers=2)
    schedule = [1.0, 0.5, 0.4]
    pipe.enable_acceleration(schedule=schedule)
    eager = _run(pipe, len(schedule))
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    if how == "in_place":
        pipe.transformer.compile(backend=counter)
    else:
        pipe.transformer = torch.compile(pipe.transformer, backend=counter)
    first = _run(pipe, len(schedule))
    assert counter.frame_count > 0, "nothing was compiled"
    torch.testing.assert_close(first, eager, rtol=0, atol=1e-4)
    again = _run(pipe, len(schedule))
    torch.testing.assert_close(again, eager, rtol=0, atol=1e-4)
    steps = vdit_accel.summary(pipe)["steps"]
    assert steps[1]["attention_queries"] == steps[1]["dense_tokens"] // 2  # the compiled run really was sparse


def test_graphs_stay_bounded_over_a_changing_schedule_and_a_repeat_compiles_nothing():
    pipe = testing.build_tiny_wan_pipeline(num_layers=1)
    pipe.enable_acceleration(schedule=CHANGING)
    eager = _run(pipe, len(CHANGING))
    cfg = TokenSelectionConfig()
    buckets = {selected_count(16, b, cfg) for b in CHANGING if b < 1.0}
    assert len(buckets) == 5
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    pipe.transformer.compile(backend=counter)
    out = _run(pipe, len(CHANGING))
    torch.testing.assert_close(out, eager, rtol=0, atol=1e-4)
    # dense call, first sparse call (static count), then one graph with a symbolic count for every later budget
    assert counter.frame_count <= 4, counter.frame_count
    compiled = counter.frame_count
    _run(pipe, len(CHANGING))
    assert counter.frame_count == compiled, "a repeat call must not compile again"


@pytest.mark.parametrize("cache", ["forecast", "output"])
def test_forecasts_and_skipped_steps_compile_bounded_and_equal_eager(cache):
    """Per-token forecasts (their timestep axis is a tensor, not a guarded float) and budget-0 steps (the step hook
    decides eagerly) compile a bounded number of graphs over a run and match eager from the first call."""
    schedule = [1.0, 1.0, 0.5, 0.0, 0.4, 0.0, 0.7, 1.0]
    pipe = testing.build_tiny_wan_pipeline(num_layers=2)
    pipe.enable_acceleration(schedule=schedule, token_selection=TokenSelectionConfig(cache=cache))
    eager = _run(pipe, len(schedule))
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    pipe.transformer.compile(backend=counter)
    out = _run(pipe, len(schedule))
    torch.testing.assert_close(out, eager, rtol=0, atol=1e-4)
    assert counter.frame_count <= 6, counter.frame_count
    compiled = counter.frame_count
    _run(pipe, len(schedule))
    assert counter.frame_count == compiled, "a repeat call must not compile again"
    assert vdit_accel.summary(pipe)["steps"][3]["skipped"] == 2


def test_no_graph_break_inside_the_blocks():
    from vdit_accel.api import accelerate_transformer
    from vdit_accel.config import AccelerationConfig

    def breaks(num_layers):
        torch._dynamo.reset()
        torch.manual_seed(0)
        transformer = testing.build_tiny_wan_pipeline(num_layers=num_layers).transformer
        config = AccelerationConfig(schedule=[1.0, 0.5])
        accelerate_transformer(transformer, config, config.schedule)
        kwargs = dict(hidden_states=torch.randn(1, 16, 2, 4, 8), timestep=torch.tensor([500]),
                      encoder_hidden_states=torch.randn(1, 16, 32), return_dict=False)
        with torch.inference_mode():
            vdit_accel.set_step(transformer, 0, 2)
            transformer(**kwargs)  # eager dense step: fills the caches
            vdit_accel.set_step(transformer, 1, 2)
            explained = torch._dynamo.explain(transformer)(**kwargs)  # a sparse step
        assert vdit_accel.summary(transformer)["steps"][1]["attention_queries"] > 0
        return explained.graph_break_count

    # the step tracker's eager bookkeeping before and after the call; nothing per block
    assert breaks(1) == breaks(3) <= 2


def test_bucketed_counts():
    cfg = TokenSelectionConfig()
    assert [selected_count(100, b, cfg) for b in (0.4, 0.5, 0.7, 0.42, 0.01, 1.0)] == [40, 50, 70, 45, 5, 100]
    exact = TokenSelectionConfig(token_buckets=None)
    assert [selected_count(100, b, exact) for b in (0.4, 0.42, 0.01)] == [40, 42, 1]
    assert selected_count(1000, 0.05, TokenSelectionConfig(token_buckets=16)) == 63  # ceil(1/16 · 1000)
    with pytest.raises(ValueError, match="token_buckets"):
        TokenSelectionConfig(token_buckets=0)


def test_compile_then_enable_in_place_works_and_disable_restores_the_compiled_dense_output():
    pipe = testing.build_tiny_wan_pipeline(num_layers=1)
    schedule = [1.0, 0.5, 0.4]
    pipe.enable_acceleration(schedule=schedule)
    eager = _run(pipe, len(schedule))
    pipe.disable_acceleration()
    pipe.transformer.compile(backend="inductor")
    dense = _run(pipe, len(schedule))
    pipe.enable_acceleration(schedule=schedule)  # hooks installed under the compiled module: dynamo retraces
    torch.testing.assert_close(_run(pipe, len(schedule)), eager, rtol=0, atol=1e-4)
    assert vdit_accel.summary(pipe)["steps"][1]["attention_queries"] == 16  # 16 video tokens x 2 CFG calls x 0.5
    pipe.disable_acceleration()
    torch.testing.assert_close(_run(pipe, len(schedule)), dense, rtol=0, atol=0)


# ------------------------------------------------------------------------------------ the user's attention backend
def test_backend_without_lse_falls_back_logged_once_naming_it(caplog):
    pipe = testing.build_tiny_wan_pipeline(num_layers=1)
    schedule = [1.0, 0.5]
    pipe.enable_acceleration(schedule=schedule)
    default = _run(pipe, 2)
    pipe.transformer.set_attention_backend("_native_math")  # PyTorch's math SDPA: no log-sum-exp
    with caplog.at_level(logging.INFO, logger="vdit_accel.kernels.dispatch"):
        eager = _run(pipe, 2)
        pipe.transformer.compile(backend="inductor")
        compiled = _run(pipe, 2)
    named = [r.getMessage() for r in caplog.records if "'_native_math'" in r.getMessage()]
    assert len(named) == 1 and "set_attention_backend" in named[0] and "'sdpa'" in named[0], named
    torch.testing.assert_close(eager, default, rtol=0, atol=1e-5)
    torch.testing.assert_close(compiled, default, rtol=0, atol=1e-4)


def test_backend_with_lse_goes_through_diffusers_dispatcher(monkeypatch):
    # flash-attn needs CUDA; the dispatcher is replaced by the reference so the plumbing (backend name, return_lse,
    # the [B, H, S] -> [B, S, H] LSE layout of flash) is checked on CPU.
    import diffusers.models.attention_dispatch as dispatch

    from vdit_accel.kernels import naive_query_sparse_attention, query_sparse_attention

    calls = []

    def fake_dispatch(q, k, v, scale=None, attention_kwargs=None, backend=None, **_):
        calls.append((backend, attention_kwargs))
        out, lse = naive_query_sparse_attention(q, k, v, None, scale)
        return out, lse.transpose(1, 2)  # flash_attn_func's softmax_lse layout

    monkeypatch.setattr(dispatch, "dispatch_attention_fn", fake_dispatch)
    q, k, v = torch.randn(2, 5, 3, 16), torch.randn(2, 11, 3, 16), torch.randn(2, 11, 3, 16)
    index = torch.tensor([[0, 2, 4], [1, 2, 3]])
    out, lse = query_sparse_attention(q, k, v, index, attention_backend=AttentionBackendName.FLASH)
    ref_out, ref_lse = naive_query_sparse_attention(q, k, v, index)
    assert calls == [("flash", {"return_lse": True})]
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(lse, ref_lse)
