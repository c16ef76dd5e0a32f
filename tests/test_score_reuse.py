"""Channel-level attention-score reuse (TimeRipple, emulated): masks, substitution, schedule, statistics, pipelines."""

import itertools
import math

import pytest
import torch
from diffusers.hooks import HookRegistry

import vdit_accel
from vdit_accel import AccelerationConfig, TokenSelectionConfig
from vdit_accel.kernels import channel_reuse_plan, naive_channel_reuse_attention, naive_query_sparse_attention
from vdit_accel.methods.score_reuse import (
    REUSE_BLOCK_HOOK,
    KernelReuseAttention,
    ReuseConfig,
    ReuseQKTransform,
    ReuseStats,
    axis_masks,
    emulate_side,
    reuse_sources,
    reuse_summary,
)
from vdit_accel.runtime import AccelRuntime, Selection, StepRecord

from .conftest import FAMILIES, hook_names, processors, run_pipe


# ------------------------------------------------------------------------------------- independent reference
def reference_substitute(x, grid, theta, axes=("t", "x", "y"), scale=None, present=None):
    """Straightforward loops: tokens in raster order; an entry whose t / y / x predecessor (in that priority) is
    within ``|a - a_prev| / 2 < theta * scale`` takes the predecessor's already-substituted value."""
    b_, n_, h_, d_ = x.shape
    f_, hh, ww = grid
    out = x.clone()
    mask = torch.zeros(x.shape, dtype=torch.bool)
    for b, h, c in itertools.product(range(b_), range(h_), range(d_)):
        s = 1.0 if scale is None else float(scale[b, 0, h, c])
        for f, y, xx in itertools.product(range(f_), range(hh), range(ww)):
            n = (f * hh + y) * ww + xx
            if present is not None and not present[b, n]:
                continue
            for ax, ok, prev in (("t", f > 0, n - hh * ww), ("y", y > 0, n - ww), ("x", xx > 0, n - 1)):
                if ax not in axes or not ok or (present is not None and not present[b, prev]):
                    continue
                if abs(float(x[b, n, h, c]) - float(x[b, prev, h, c])) / 2 < theta * s:
                    out[b, n, h, c] = out[b, prev, h, c]
                    mask[b, n, h, c] = True
                    break
    return out, mask


def reference_attention(q, k, v):
    qh, kh, vh = (t.transpose(1, 2).double() for t in (q, k, v))  # [B, H, S, D]
    p = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return (p @ vh).transpose(1, 2)


def _runtime(grid, step=2, num_steps=4):
    rt = AccelRuntime()
    rt.grid, rt.step, rt.num_steps = grid, step, num_steps
    rt.records.append(StepRecord(step=step, context="cond", budget=1.0, batch=0))
    return rt


# ------------------------------------------------------------------------------------- hand-computed example
# grid (F, H, W) = (2, 1, 2): tokens 0=(f0,x0) 1=(f0,x1) 2=(f1,x0) 3=(f1,x1); one head, three channels, θ = 0.5 raw.
HAND_Q = torch.tensor([[0.0, 1.0, 0.0],
                       [0.4, 5.0, 0.5],
                       [3.0, 1.2, 1.2],
                       [3.5, 5.0, 0.9]]).view(1, 4, 1, 3)
# ch0: x passes for tokens 1 (0.2) and 3 (0.25); t fails (1.5, 1.55).
# ch1: x fails (2.0, 1.9); t passes for tokens 2 (0.1) and 3 (0.0).
# ch2: token 1 x (0.25); token 2 t fails (0.6), x fails (1.5); token 3 passes t (vs 1: 0.2) and x (vs 2: 0.15) ->
#      t has priority: 3 <- 1 <- 0, so it gets 0.0 (x would have given 1.2).
HAND_MASK = torch.tensor([[False, False, False],
                          [True, False, True],
                          [False, True, False],
                          [True, True, True]]).view(1, 4, 1, 3)
HAND_QT = torch.tensor([[0.0, 1.0, 0.0],
                        [0.0, 5.0, 0.0],
                        [3.0, 1.0, 1.2],
                        [3.0, 5.0, 0.0]]).view(1, 4, 1, 3)
RAW = ReuseConfig(normalize=False)


def test_hand_example_masks_and_substitution():
    masks = axis_masks(HAND_Q, (2, 1, 2), 0.5)
    assert masks["y"].sum() == 0  # one row: nothing has a y predecessor
    reused, root = reuse_sources(masks, (2, 1, 2))
    assert torch.equal(reused, HAND_MASK)
    assert root[0, :, 0, 2].tolist() == [0, 0, 2, 0]
    qt, m = emulate_side(HAND_Q, (2, 1, 2), 0.5, RAW)
    assert torch.equal(qt, HAND_QT) and torch.equal(m, HAND_MASK)
    ref, ref_mask = reference_substitute(HAND_Q, (2, 1, 2), 0.5)
    assert torch.equal(ref, HAND_QT) and torch.equal(ref_mask, HAND_MASK)


def test_chains_resolve_to_the_computed_root():
    x = torch.tensor([0.0, 0.8, 1.6, 5.0]).view(1, 4, 1, 1)  # each within 0.4 of its left neighbour except the last
    xt, m = emulate_side(x, (1, 1, 4), 0.5, RAW)
    assert xt.flatten().tolist() == [0.0, 0.0, 0.0, 5.0] and m.flatten().tolist() == [False, True, True, False]


def test_hand_example_attention_and_saved_fraction():
    k = HAND_Q.flip(1) * 0.5 + 0.1
    v = torch.arange(12.0).view(1, 4, 1, 3)
    rt = _runtime((2, 1, 2))
    stats = ReuseStats(group_names=("all",))
    transform = ReuseQKTransform(rt, ReuseConfig(theta_min=0.5, theta_max=0.5, normalize=False, warmup_steps=0),
                                 (("all", 0, 3),), stats)
    qt, kt = transform(None, Selection(num_video=4, block_name="blocks.0"), HAND_Q, k, 0)
    ref_k, k_mask = reference_substitute(k, (2, 1, 2), 0.5)
    assert torch.equal(qt, HAND_QT) and torch.equal(kt, ref_k)
    out, _ = rt.attention_fn(qt, kt, v)
    torch.testing.assert_close(out.double(), reference_attention(HAND_QT, ref_k, v), atol=1e-6, rtol=1e-6)
    # products computed per channel = query rows not reused x key rows not reused
    nq, nk = 4 - HAND_MASK.sum(dim=1).flatten(), 4 - k_mask.sum(dim=1).flatten()
    expected = 1 - float((nq * nk).sum()) / (4 * 4 * 3)
    summary = stats.summary()
    assert summary["saved_fraction"] == pytest.approx(expected)
    assert summary["steps"][0]["q_fraction"] == pytest.approx(6 / 12)  # six True entries in HAND_MASK
    assert summary["layer_names"] == ["blocks.0"] and summary["mode"] == "emulate"


# ------------------------------------------------------------------------------------- random vs reference
@pytest.mark.parametrize("grid", [(3, 2, 3), (2, 3, 1)], ids=["3x2x3", "2x3x1"])
@pytest.mark.parametrize("axes", [("t", "x", "y"), ("t",), ("x", "y")], ids=["txy", "t", "xy"])
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "raw"])
def test_substitution_matches_reference(grid, axes, normalize):
    n = grid[0] * grid[1] * grid[2]
    base = torch.randn(2, 1, 2, 5).cumsum(dim=1)
    x = base + 0.3 * torch.randn(2, n, 2, 5)  # correlated neighbours so that several entries (and chains) pass
    cfg = ReuseConfig(axes=axes, normalize=normalize)
    theta = 0.4
    xt, m = emulate_side(x, grid, theta, cfg)
    scale = x.std(dim=1, unbiased=False, keepdim=True) if normalize else None
    ref, ref_mask = reference_substitute(x, grid, theta, axes, scale)
    assert torch.equal(m, ref_mask) and torch.equal(xt, ref)
    assert 0 < m.sum() < m.numel()


def test_selected_rows_reuse_only_selected_neighbours():
    grid = (2, 2, 3)
    index = torch.tensor([[0, 1, 3, 4, 7, 8, 10]])
    present = torch.zeros(1, 12, dtype=torch.bool)
    present[0, index[0]] = True
    # deterministic: every token far from its neighbours except 4 ~ 1 (y, both selected) and 7 = 6 (x, 6 unselected)
    x = (10.0 * torch.arange(12.0)).view(1, 12, 1, 1)
    x[0, 4], x[0, 7] = 10.1, 60.0
    xt, m = emulate_side(x[:, index[0]], grid, 0.5, RAW, index=index)
    assert m.flatten().tolist() == [False, False, False, True, False, False, False]
    assert xt.flatten().tolist() == [0.0, 10.0, 30.0, 10.0, 60.0, 80.0, 100.0]
    full, m_full = emulate_side(x, grid, 0.5, RAW)
    assert m_full[0, 7].all()  # with all rows present token 7 would copy token 6
    # random: the vectorised path matches the loops with the presence rule
    x = torch.randn(1, 1, 1, 4) + 0.5 * torch.randn(1, 12, 1, 4)
    xt, m = emulate_side(x[:, index[0]], grid, 0.4, RAW, index=index)
    ref, ref_mask = reference_substitute(x, grid, 0.4, present=present)
    assert torch.equal(xt, ref[:, index[0]]) and torch.equal(m, ref_mask[:, index[0]])


def test_group_granularity_decides_per_rope_group():
    x = torch.randn(1, 1, 2, 8) + 0.4 * torch.randn(1, 18, 2, 8)
    groups = (("t", 0, 2), ("h", 2, 5), ("w", 5, 8))
    _, m_chan = emulate_side(x, (2, 3, 3), 0.5, RAW, groups=groups)
    _, m_group = emulate_side(x, (2, 3, 3), 0.5, ReuseConfig(normalize=False, granularity="group"), groups=groups)
    for _, s, e in groups:
        blk = m_group[..., s:e]
        assert torch.equal(blk, blk[..., :1].expand_as(blk))
    assert m_group.sum() < m_chan.sum()


def test_theta_zero_is_identity():
    x = torch.zeros(1, 8, 1, 2)  # all equal: any theta > 0 reuses everything possible, 0 reuses nothing
    xt, m = emulate_side(x, (2, 2, 2), 0.0, RAW)
    assert not m.any() and torch.equal(xt, x)
    assert emulate_side(x, (2, 2, 2), 1e-6, RAW)[1].sum() == 7 * 2  # all but the first token, both channels


# ------------------------------------------------------------------------------------- schedule
def test_schedule_ramp_warmup_and_last_step():
    cfg = ReuseConfig(theta_min=0.1, theta_max=0.5, i_min=3, i_max=7, warmup_steps=2)
    assert cfg.thetas(10) == pytest.approx([0, 0, 0.1, 0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0])
    assert ReuseConfig(theta_min=0.1, theta_max=0.5, i_min=3, i_max=7, warmup_steps=2,
                       dense_last=False).thetas(10)[-1] == 0.5


def test_schedule_defaults_follow_the_paper_proportions():
    cfg = ReuseConfig(theta_min=0.2, theta_max=0.5)
    assert cfg.resolve_steps(50) == (10, 10, 20)
    thetas = cfg.thetas(50)
    assert thetas[:10] == [0.0] * 10 and thetas[10] == 0.2 and thetas[20:49] == [0.5] * 29 and thetas[49] == 0.0
    assert thetas[15] == pytest.approx(0.35)


# ------------------------------------------------------------------------------------- pipelines


REUSE = ReuseConfig(theta_min=0.3, theta_max=0.5, warmup_steps=1)


@pytest.mark.parametrize("family", ["wan", "cogvideox-rope"])
def test_theta_zero_equals_dense_exactly(family):
    pipe = FAMILIES[family]()
    dense = run_pipe(pipe, steps=4)
    pipe.enable_acceleration(reuse=ReuseConfig(theta_min=0.0, theta_max=0.0, warmup_steps=0), token_selection=None)
    assert torch.equal(run_pipe(pipe, steps=4), dense)
    assert reuse_summary(pipe)["saved_fraction"] == 0.0
    pipe.disable_acceleration()
    schedule = [1.0, 0.5, 0.5, 1.0]
    # the same attention path in both runs: with reuse installed a dense step cannot take the family's own processor
    ts = TokenSelectionConfig(dense_fast_path=False)
    pipe.enable_acceleration(schedule=schedule, token_selection=ts)
    token_only = run_pipe(pipe, steps=4)
    pipe.disable_acceleration()
    pipe.enable_acceleration(schedule=schedule, reuse=ReuseConfig(theta_min=0.0, theta_max=0.0, warmup_steps=0),
                             token_selection=ts)
    assert torch.equal(run_pipe(pipe, steps=4), token_only)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_reuse_alone(family):
    pipe = FAMILIES[family]()
    before = processors(pipe.transformer)
    dense = run_pipe(pipe, steps=4)
    pipe.enable_acceleration(reuse=REUSE, token_selection=None)
    out = run_pipe(pipe, steps=4)
    assert not torch.equal(out, dense) and torch.isfinite(out).all()
    s = reuse_summary(pipe)
    n_layers = pipe.transformer.config.num_layers
    assert [st["theta"] for st in s["steps"]] == [0.0, REUSE.theta_min, REUSE.theta_max, 0.0]
    fr = [st["saved_fraction"] for st in s["steps"]]
    assert fr[0] == 0.0 and fr[3] == 0.0 and 0 < fr[1] < fr[2] < 1
    assert len(s["layers"]) == n_layers and len(s["step_layer"]) == 4
    expected_groups = ["all"] if family == "cogvideox-sincos" else ["t", "h", "w"]
    assert s["group_names"] == expected_groups and all(0 < g < 1 for g in s["groups"].values())
    assert vdit_accel.summary(pipe)["computed_token_fraction"] == 1.0  # reuse alone skips no tokens
    pipe.disable_acceleration()
    assert processors(pipe.transformer) == before
    assert not any(n.startswith("vdit_accel") for n in hook_names(pipe.transformer))
    assert reuse_summary(pipe)["saved_fraction"] == s["saved_fraction"]  # the last run stays readable
    assert torch.equal(run_pipe(pipe, steps=4), dense)


@pytest.mark.parametrize("family", ["wan", "cogvideox-rope"])
def test_reuse_with_token_selection(family):
    pipe = FAMILIES[family]()
    schedule = [1.0, 0.5, 0.5, 1.0]
    pipe.enable_acceleration(schedule=schedule)
    token_only = run_pipe(pipe, steps=4)
    pipe.disable_acceleration()
    pipe.enable_acceleration(schedule=schedule, reuse=REUSE)
    both = run_pipe(pipe, steps=4)
    assert not torch.equal(both, token_only)
    assert REUSE_BLOCK_HOOK not in hook_names(pipe.transformer)  # token selection's block hook drives the processor
    s = reuse_summary(pipe)
    step = s["steps"][1]
    assert 0 < step["q_fraction"] < step["k_fraction"]  # Q-side reuse needs the neighbour row selected too
    # products are counted over the query rows actually computed: selected video rows (+ text rows of CogVideoX)
    rt = vdit_accel.get_runtime(pipe)
    n, cfg = math.prod(rt.grid), pipe.transformer.config
    text = 0 if family == "wan" else 16  # max_sequence_length of run_pipe; joint attention has the text rows
    queries = sum(r.attention_queries for r in rt.records if r.step == 1)
    sample_blocks = sum(r.batch * r.blocks for r in rt.records if r.step == 1)
    assert queries < sample_blocks * n  # budget 0.5 really computed fewer rows
    expected = (queries + text * sample_blocks) * cfg.num_attention_heads * (n + text) * cfg.attention_head_dim
    assert step["products"] == expected


def test_stats_reset_per_pipeline_call():
    pipe = FAMILIES["wan"]()
    pipe.enable_acceleration(reuse=REUSE, token_selection=None)
    run_pipe(pipe, steps=4)
    first = reuse_summary(pipe)
    run_pipe(pipe, steps=4)
    second = reuse_summary(pipe)
    assert len(second["steps"]) == 4 and second["saved_fraction"] == pytest.approx(first["saved_fraction"])
    recs = vdit_accel.get_runtime(pipe).extras["reuse"].records
    assert len(recs) == 4 * 2 * pipe.transformer.config.num_layers  # steps x CFG calls x layers


# ------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, match", [
    (dict(theta_max=-0.1), "theta_max"),
    (dict(theta_min=0.6, theta_max=0.5), "theta_min"),
    (dict(theta_max=float("nan")), "theta_max"),
    (dict(i_min=5, i_max=2), "i_min"),
    (dict(warmup_steps=-1), "warmup_steps"),
    (dict(i_max=2.5), "i_max"),
    (dict(axes=("t", "z")), "axes"),
    (dict(axes=()), "axes"),
    (dict(window=3), "window"),
    (dict(mode="fused"), "mode"),
    (dict(kernel_axis="z"), "kernel_axis"),
    (dict(tile_tokens=0), "tile_tokens"),
    (dict(criterion="median"), "criterion"),
    (dict(granularity="block"), "granularity"),
    (dict(reuse_q=False, reuse_k=False), "reuse_q"),
])
def test_bad_reuse_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReuseConfig(**kwargs)


def test_bad_reuse_type_raises_before_any_change():
    pipe = FAMILIES["wan"]()
    before = processors(pipe.transformer)
    with pytest.raises(TypeError, match="`reuse` must be a vdit_accel.ReuseConfig"):
        pipe.enable_acceleration(reuse={"theta_max": 0.5}, token_selection=None)
    with pytest.raises(TypeError, match="dense_last"):
        ReuseConfig(dense_last="yes")
    assert not vdit_accel.is_accelerated(pipe) and processors(pipe.transformer) == before
    assert not hook_names(pipe.transformer)
    assert AccelerationConfig(reuse=REUSE, token_selection=None).reuse is REUSE


def test_disable_removes_reuse_registry_entries():
    pipe = FAMILIES["cogvideox-rope"]()
    pipe.enable_acceleration(reuse=REUSE, token_selection=None)
    rt = vdit_accel.get_runtime(pipe)
    assert len(rt.qk_transforms) == 1 and "reuse" in rt.extras
    block = pipe.transformer.transformer_blocks[0]
    assert HookRegistry.check_if_exists_or_initialize(block).get_hook(REUSE_BLOCK_HOOK) is not None
    pipe.disable_acceleration()
    assert rt.qk_transforms == [] and "reuse" not in rt.extras


# ------------------------------------------------------------------------------------- kernel mode
KERNEL = ReuseConfig(theta_min=1.0, theta_max=1.0, warmup_steps=1, mode="kernel", tile_tokens=16, tiles_per_group=2,
                     block_channels=4)  # tiny random models: coarse blocks need a loose threshold to reuse


def test_kernel_mode_attention_and_stats():
    grid, n, text, d = (4, 2, 4), 32, 3, 16
    # channels 0-7: a spatial pattern repeated in every frame (reusable along t); channels 8-15: noise (not)
    qv = torch.randn(1, n, 2, d)
    qv[..., :8] = torch.randn(1, 1, 8, 2, 8).expand(1, 4, 8, 2, 8).reshape(1, n, 2, 8) + 0.05 * qv[..., :8]
    q = torch.cat([torch.randn(1, text, 2, d), qv], dim=1)  # joint layout: text rows first
    k, v = torch.randn(1, text + n, 2, d), torch.randn(1, text + n, 2, d)
    cfg = ReuseConfig(theta_min=0.5, theta_max=0.5, warmup_steps=0, mode="kernel", tile_tokens=4,
                      tiles_per_group=2, block_channels=8)
    rt = _runtime(grid)
    stats = ReuseStats(group_names=("all",), mode="kernel")
    kernel = KernelReuseAttention(rt, cfg, stats, ReuseQKTransform(rt, cfg, (("all", 0, d),), stats),
                                  naive_query_sparse_attention)
    kernel.mark(None, Selection(num_video=n, block_name="blocks.0"), q, k, text)
    out, lse = kernel(q, k, v)
    plan = channel_reuse_plan(qv / qv.std(dim=1, unbiased=False, keepdim=True), grid, 0.5, axis="t",
                              block_channels=8, tile_tokens=4, tiles_per_group=2)
    assert plan.reuse.any() and not plan.reuse.all()
    ref_v, ref_lse_v = naive_channel_reuse_attention(qv, k, v, plan)
    ref_t, ref_lse_t = naive_query_sparse_attention(q[:, :text], k, v)
    torch.testing.assert_close(out, torch.cat([ref_t, ref_v], dim=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, torch.cat([ref_lse_t, ref_lse_v], dim=1), atol=1e-5, rtol=1e-5)
    summary = stats.summary()
    assert summary["mode"] == "kernel" and summary["steps"][0]["k_fraction"] == 0
    # the kernel's own saved fraction is over the video rows; ours is over all rows computed (text included)
    assert summary["saved_fraction"] == pytest.approx(float(plan.saved_fraction) * n / (n + text))


@pytest.mark.parametrize("family", ["wan", "cogvideox-rope"])
def test_kernel_mode_in_pipelines(family):
    pipe = FAMILIES[family]()
    dense = run_pipe(pipe, steps=4)
    inner = None
    pipe.enable_acceleration(reuse=KERNEL, token_selection=None)
    rt = vdit_accel.get_runtime(pipe)
    assert isinstance(rt.attention_fn, KernelReuseAttention)
    inner = rt.attention_fn.inner
    out = run_pipe(pipe, steps=4)
    assert not torch.equal(out, dense) and torch.isfinite(out).all()
    s = reuse_summary(pipe)
    assert s["mode"] == "kernel" and s["steps"][0]["saved_fraction"] == 0 and s["steps"][2]["saved_fraction"] > 0
    pipe.disable_acceleration()
    assert rt.attention_fn is inner and rt.qk_transforms == []
    assert torch.equal(run_pipe(pipe, steps=4), dense)
    # with token selection the kernel runs only where every row is computed (budget 1.0)
    pipe.enable_acceleration(schedule=[1.0, 1.0, 0.5, 1.0], reuse=KERNEL)
    run_pipe(pipe, steps=4)
    fr = [st["saved_fraction"] for st in reuse_summary(pipe)["steps"]]
    assert fr[1] > 0 and fr[2] == 0 and fr[0] == fr[3] == 0


# ------------------------------------------------------------------------------------- report and CLI
def test_cli_generate_with_reuse_writes_report_and_plot(tmp_path):
    import json

    from vdit_accel.cli import main

    out = tmp_path / "out"
    rc = main(["generate", "--model", "tiny-wan", "--prompt", "a dog dancing", "--steps", "4", "--reuse",
               "--reuse-theta-max", "0.4", "--reuse-warmup", "1", "--no-token-selection", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    reuse = report["reuse"]
    assert reuse["mode"] == "emulate" and "no time is saved" in reuse["note"]
    assert [s["theta"] for s in reuse["steps"]] == [0.0, 0.2, 0.4, 0.0]  # ramp end defaults to round(0.4 * 4) = 2
    assert reuse["steps"][2]["saved_fraction"] > 0 and (out / "reuse.png").stat().st_size > 1000
    assert reuse["plot"] == str(out / "reuse.png")
    assert main(["generate", "--model", "tiny-wan", "--prompt", "x", "--no-token-selection",
                 "--out", str(out)]) == 2  # nothing to accelerate: clear error, before loading anything


def test_format_reuse_labels_emulation():
    from vdit_accel.commands.reports import format_reuse

    pipe = FAMILIES["wan"]()
    pipe.enable_acceleration(reuse=REUSE, token_selection=None)
    run_pipe(pipe, steps=3)
    text = format_reuse(reuse_summary(pipe))
    assert text.startswith("score reuse (emulated") and text.count("step ") == 3


# ------------------------------------------------------------------------------------- the other families
OTHER_FAMILIES = {  # builder, call kwargs (CFG on); [video, text] / [text, video] joint layouts and text masks
    "hunyuan_video": ("build_tiny_hunyuan_video_pipeline",
                      dict(height=16, width=16, num_frames=9, prompt_template={"template": "{}", "crop_start": 0},
                           true_cfg_scale=3.0)),
    "ltx": ("build_tiny_ltx_pipeline", dict(height=32, width=32, num_frames=9, guidance_scale=3.0)),
    "mochi": ("build_tiny_mochi_pipeline", dict(height=32, width=32, num_frames=7, guidance_scale=4.5)),
}


@pytest.mark.parametrize("family", list(OTHER_FAMILIES))
def test_reuse_on_other_families(family):
    from vdit_accel import testing

    builder, call = OTHER_FAMILIES[family]
    if not hasattr(testing, builder):
        pytest.skip(f"vdit_accel.testing has no {builder} in this version")
    pipe = getattr(testing, builder)()
    pipe.set_progress_bar_config(disable=True)

    def run():
        with torch.no_grad():
            return pipe(prompt="a red car", negative_prompt="blurry", num_inference_steps=4, max_sequence_length=16,
                        output_type="latent", generator=torch.Generator().manual_seed(0), **call).frames

    dense = run()
    pipe.enable_acceleration(reuse=ReuseConfig(theta_min=0.0, theta_max=0.0), token_selection=None)
    assert torch.equal(run(), dense)
    pipe.disable_acceleration()
    pipe.enable_acceleration(reuse=REUSE, token_selection=None)
    out = run()
    fr = [s["saved_fraction"] for s in reuse_summary(pipe)["steps"]]
    assert not torch.equal(out, dense) and fr[0] == fr[3] == 0 and fr[1] > 0 and fr[2] > 0
    pipe.disable_acceleration()
    pipe.enable_acceleration(schedule=[1.0, 0.5, 0.5, 1.0], reuse=REUSE)
    run()
    assert reuse_summary(pipe)["steps"][2]["saved_fraction"] > 0
