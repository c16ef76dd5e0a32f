"""torch.compile (inductor, CPU) on an accelerated pipeline: same output as eager from the first call on, a bounded
number of graphs over a run whose budgets change every step, no graph break inside the blocks.

Run: OMP_NUM_THREADS=1 python -m pytest tests/test_compile.py -q   (about a minute per compile on a free core)
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing

import vdit_accel
from vdit_accel import TokenSelectionConfig, testing
from vdit_accel.methods.token_counts import selected_count

# budgets that change every step, five distinct token counts (16 video tokens: k = 8, 8, 5, 12, 4, 7)
CHANGING = [1.0, 0.5, 0.45, 0.3, 0.7, 0.25, 0.4, 1.0]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
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
