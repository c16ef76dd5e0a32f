"""Every supported family, on tiny offline pipelines of the real diffusers classes.

Run: OMP_NUM_THREADS=1 python -m pytest tests/test_families.py -q
(families tested at the transformer level: tests/test_family_transformers.py)

Each family is a real pipeline (``vdit_accel.testing``) called end to end with ``output_type="latent"`` (the VAE is
not what is accelerated, and latents compare more precisely than decoded frames). Checks: budget 1.0 equals dense,
``disable_acceleration()`` is bit-identical, budget 0.5 halves the per-step token counts, CFG batched/unbatched,
batch 2 matches the samples run alone, padded text never changes the output, Wan 2.2 experts keep their own steps,
unsupported transformers fail clearly.
"""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

import vdit_accel
from vdit_accel import testing
from vdit_accel.adapters import supported_transformers

from .family_checks import assert_template_processor, capture_blocks, check_selected_rows_against_dense_blocks

# diffusers' MochiRoPE enters a CPU fp32 autocast region, which torch warns about on every call
pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")

STEPS = 4
HALF = [1.0, 0.5, 0.5, 1.0]


def _image(seed=0):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy())


class Family:
    """How to build and call one family's tiny pipeline, with and without CFG."""

    def __init__(self, name, build, call, cfg, no_cfg, cfg_calls, tokens, text_mask=False):
        self.name, self.build, self.call = name, build, call
        self.cfg, self.no_cfg = cfg, no_cfg
        self.cfg_calls = cfg_calls  # transformer calls per step with CFG on: 1 (batched) or 2 (cond, uncond)
        self.tokens = tokens  # video tokens per block of this call
        self.text_mask = text_mask  # the transformer takes a text padding mask

    def kwargs(self, cfg: bool, prompt="a red car", **extra):
        kw = dict(self.call, **(self.cfg if cfg else self.no_cfg))
        kw.update(prompt=prompt, num_inference_steps=STEPS, output_type="latent")
        if self.name in _FTFY:  # these pipelines clean prompts with ftfy: pass embeddings
            pipe = _pipe(self.name)
            prompts = [prompt] if isinstance(prompt, str) else prompt
            kw.pop("prompt")
            kw["prompt_embeds"] = testing.wan_prompt_embeds(pipe, prompts)
            kw["negative_prompt_embeds"] = testing.wan_prompt_embeds(pipe, [""] * len(prompts)) if cfg else None
            if self.name == "skyreels_v2":
                pass
            elif self.name == "wan_animate":
                kw["image"], kw["pose_video"] = _image(), [_image(1)] * 9
                kw["face_video"] = [_image(2).resize((16, 16))] * 9
            elif self.name == "wan_vace":
                kw["video"], kw["mask"] = [_image(1)] * 9, [Image.new("L", (32, 32), 0)] * 9
            else:
                kw["image"] = _image()
        kw.update(extra)
        return kw


_FTFY = ("wan_i2v", "wan22_i2v", "wan_vace", "chronoedit", "skyreels_v2", "wan_animate")
_WAN_CALL = dict(height=32, width=32, num_frames=9, max_sequence_length=16)
FAMILIES = {
    f.name: f
    for f in [
        Family("wan", testing.build_tiny_wan_pipeline, _WAN_CALL, dict(guidance_scale=5.0, negative_prompt="blurry"),
               dict(guidance_scale=1.0), cfg_calls=2, tokens=12),
        Family("cogvideox", testing.build_tiny_cogvideox_pipeline,
               dict(height=32, width=32, num_frames=9, max_sequence_length=16),
               dict(guidance_scale=6.0, negative_prompt="blurry"), dict(guidance_scale=1.0), cfg_calls=1, tokens=12),
        Family("hunyuan_video", testing.build_tiny_hunyuan_video_pipeline,
               dict(height=16, width=16, num_frames=9, max_sequence_length=16,
                    prompt_template={"template": "{}", "crop_start": 0}),
               dict(true_cfg_scale=3.0, negative_prompt="blurry"), dict(), cfg_calls=2, tokens=12, text_mask=True),
        Family("ltx", testing.build_tiny_ltx_pipeline, dict(height=32, width=32, num_frames=9, max_sequence_length=16),
               dict(guidance_scale=3.0, negative_prompt="blurry"), dict(guidance_scale=1.0), cfg_calls=1, tokens=192,
               text_mask=True),
        Family("ltx_condition", testing.build_tiny_ltx_condition_pipeline,
               dict(height=32, width=32, num_frames=9, max_sequence_length=16),
               dict(guidance_scale=3.0, negative_prompt="blurry"), dict(guidance_scale=1.0), cfg_calls=1, tokens=192,
               text_mask=True),
        Family("mochi", testing.build_tiny_mochi_pipeline,
               dict(height=32, width=32, num_frames=7, max_sequence_length=16),
               dict(guidance_scale=4.5, negative_prompt="blurry"), dict(guidance_scale=1.0), cfg_calls=1, tokens=8,
               text_mask=True),
        Family("wan22", testing.build_tiny_wan22_pipeline, _WAN_CALL,
               dict(guidance_scale=5.0, negative_prompt="blurry"), dict(guidance_scale=1.0), cfg_calls=2, tokens=12),
        Family("wan_i2v", testing.build_tiny_wan_i2v_pipeline, dict(height=32, width=32, num_frames=9),
               dict(guidance_scale=5.0), dict(guidance_scale=1.0), cfg_calls=2, tokens=12),
        Family("wan22_ti2v", testing.build_tiny_wan22_ti2v_pipeline, _WAN_CALL,
               dict(guidance_scale=5.0, negative_prompt="blurry"), dict(guidance_scale=1.0), cfg_calls=2, tokens=12),
        Family("wan22_i2v", testing.build_tiny_wan22_i2v_pipeline, dict(height=32, width=32, num_frames=9),
               dict(guidance_scale=5.0), dict(guidance_scale=1.0), cfg_calls=2, tokens=12),
        Family("wan_vace", testing.build_tiny_wan_vace_pipeline, dict(height=32, width=32, num_frames=9),
               dict(guidance_scale=5.0), dict(guidance_scale=1.0), cfg_calls=2, tokens=12),
        Family("chronoedit", testing.build_tiny_chronoedit_pipeline, dict(height=32, width=32, num_frames=5),
               dict(guidance_scale=5.0), dict(guidance_scale=1.0), cfg_calls=2, tokens=8),
        Family("skyreels_v2", testing.build_tiny_skyreels_v2_pipeline, _WAN_CALL, dict(guidance_scale=5.0),
               dict(guidance_scale=1.0), cfg_calls=2, tokens=12),
        Family("wan_animate", testing.build_tiny_wan_animate_pipeline,
               dict(height=32, width=32, segment_frame_length=9, mode="animate", prev_segment_conditioning_frames=1),
               dict(guidance_scale=5.0), dict(guidance_scale=1.0), cfg_calls=2, tokens=16),
        Family("hunyuan_video_framepack", testing.build_tiny_hunyuan_video_framepack_pipeline,
               dict(height=32, width=32, num_frames=9, latent_window_size=3, max_sequence_length=16,
                    prompt_template={"template": "{}", "crop_start": 0}, image=_image()),
               dict(true_cfg_scale=3.0, negative_prompt="blurry"), dict(), cfg_calls=2, tokens=25, text_mask=True),
    ]
}
_PIPES: dict[str, object] = {}


def _pipe(name):
    if name not in _PIPES:
        pipe = FAMILIES[name].build()
        pipe.set_progress_bar_config(disable=True)
        _PIPES[name] = pipe
    return _PIPES[name]


# Pipelines that do not batch: WanVACEPipeline (one control video, one generator; diffusers skips its batch tests
# too) and HunyuanVideoFramepackPipeline (its history latents and image embeddings have batch 1)
_NO_BATCH = ("WanVACEPipeline", "HunyuanVideoFramepackPipeline")


def _run(pipe, kwargs, seed=0):
    n = 1 if type(pipe).__name__ in _NO_BATCH else _batch(kwargs)
    gen = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    with torch.no_grad():
        frames = pipe(**kwargs, generator=gen if len(gen) > 1 else gen[0]).frames
    return torch.cat(frames, dim=2) if isinstance(frames, list) else frames  # Framepack: latents per section


def _batch(kwargs):
    if "prompt" in kwargs and isinstance(kwargs["prompt"], list):
        return len(kwargs["prompt"]) * kwargs.get("num_videos_per_prompt", 1)
    if "prompt_embeds" in kwargs:
        return kwargs["prompt_embeds"].shape[0]
    return kwargs.get("num_videos_per_prompt", 1)


@pytest.fixture(autouse=True)
def _always_disable():
    yield
    for pipe in _PIPES.values():
        vdit_accel.disable_acceleration(pipe)


def _experts(pipe):
    return [name for name in ("transformer", "transformer_2") if getattr(pipe, name, None) is not None]


@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_budget_one_equals_dense_and_disable_is_bit_identical(family, cfg):
    fam, pipe = FAMILIES[family], _pipe(family)
    kwargs = fam.kwargs(cfg)
    dense = _run(pipe, kwargs)
    pipe.enable_acceleration(schedule=[1.0] * STEPS)
    accelerated = _run(pipe, kwargs)
    assert vdit_accel.is_accelerated(pipe)
    stats = vdit_accel.summary(pipe)
    calls = fam.cfg_calls if cfg else 1
    assert all(s["attention_queries"] == s["dense_tokens"] > 0 for s in stats["steps"]), stats
    assert all(s["calls"] == calls for s in stats["steps"]), stats
    pipe.disable_acceleration()
    again = _run(pipe, kwargs)
    torch.testing.assert_close(accelerated, dense, rtol=1e-4, atol=1e-5)
    assert torch.equal(again, dense), "disable_acceleration() must restore bit-identical output"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_half_budget_halves_token_counts(family):
    fam, pipe = FAMILIES[family], _pipe(family)
    kwargs = fam.kwargs(True)
    dense = _run(pipe, kwargs)
    pipe.enable_acceleration(schedule=HALF)
    out = _run(pipe, kwargs)
    assert torch.isfinite(out).all() and not torch.equal(out, dense)
    seen_steps = []
    for expert in _experts(pipe):
        steps = vdit_accel.summary(pipe, expert)["steps"]
        first = steps[0]["step"]  # each expert's first call of each CFG context is dense: nothing is cached yet
        for s in steps:
            seen_steps.append(s["step"])
            rec = [r for r in vdit_accel.get_runtime(pipe, expert).records if r.step == s["step"]]
            n = rec[0].video_tokens
            assert n == fam.tokens
            per_call = [r.blocks * r.batch for r in rec]
            if HALF[s["step"]] == 1.0 or s["step"] == first:
                expected = s["dense_tokens"]
            else:
                expected = sum(per_call) * math.ceil(0.5 * n)
                assert expected < s["dense_tokens"]
            assert s["attention_queries"] == expected, (expert, s)
            assert s["ffn_tokens"] == expected, (expert, s)
            has_cross = not family.startswith(("cogvideox", "hunyuan_video", "mochi"))  # joint attention only
            assert s["cross_attention_tokens"] == (expected if has_cross else 0), (expert, s)
    assert sorted(seen_steps) == list(range(STEPS))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_selected_tokens_equal_the_dense_block(family):
    """At budget 0.5 each block's selected video rows, and its text stream, equal the dense block run on the same
    inputs: query-sparse attention, per-sample RoPE rows, padding masks and row-subset submodules are exact."""
    fam, pipe = FAMILIES[family], _pipe(family)
    pipe.enable_acceleration(schedule=HALF)
    captured, handles = capture_blocks(
        [(getattr(pipe, e), vdit_accel.get_runtime(pipe, e)) for e in _experts(pipe)])
    prompts = ["a red car", "a small blue robot dancing on the beach at night"]
    try:
        _run(pipe, fam.kwargs(True, prompt=prompts[:1] if type(pipe).__name__ in _NO_BATCH else prompts))
    finally:
        for h in handles:
            h.remove()
    masks = {id(rt): dict(rt.masks) for _, _, rt, *_ in captured}
    pipe.disable_acceleration()
    assert check_selected_rows_against_dense_blocks(captured, masks) >= 2, "no half-budget block was checked"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_processors_are_the_template_with_the_families_signature(family):
    assert_template_processor(_pipe(family).transformer)


@pytest.mark.parametrize("cfg", [True, False], ids=["cfg", "no-cfg"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_batch_of_two_matches_samples_alone(family, cfg):
    """Two different prompts (different valid text lengths) in one call give each sample's own result: selection,
    caches and the per-sample text masks never mix samples."""
    fam, pipe = FAMILIES[family], _pipe(family)
    if type(pipe).__name__ in _NO_BATCH:
        pytest.skip(f"{type(pipe).__name__} does not batch (diffusers skips its batch tests too)")
    prompts = ["a red car", "a small blue robot dancing on the beach at night"]
    pipe.enable_acceleration(schedule=HALF)
    both = _run(pipe, fam.kwargs(cfg, prompt=prompts))
    records = vdit_accel.get_runtime(pipe).records
    assert {r.batch for r in records} == {4 if (cfg and fam.cfg_calls == 1) else 2}
    for i, p in enumerate(prompts):
        alone = _run(pipe, fam.kwargs(cfg, prompt=p), seed=i)
        torch.testing.assert_close(both[i:i + 1], alone, rtol=1e-4, atol=1e-4)  # batched vs single matmul rounding


def _encode(family, pipe, prompt):
    kw = FAMILIES[family].call
    if family.startswith("hunyuan_video"):
        embeds, pooled, mask = pipe.encode_prompt(prompt, prompt_template=kw["prompt_template"],
                                                  max_sequence_length=kw["max_sequence_length"])
        return dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled, prompt_attention_mask=mask)
    embeds, mask, _, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False,
                                            max_sequence_length=kw["max_sequence_length"])
    return dict(prompt_embeds=embeds, prompt_attention_mask=mask)


@pytest.mark.parametrize("accelerated", [False, True], ids=["dense", "accelerated"])
@pytest.mark.parametrize("family", [f for f in FAMILIES if FAMILIES[f].text_mask])
def test_padded_text_never_changes_output(family, accelerated):
    fam, pipe = FAMILIES[family], _pipe(family)
    if type(pipe).__name__ in _NO_BATCH:
        pytest.skip(f"{type(pipe).__name__} does not batch: no two text lengths in one call")
    with torch.no_grad():
        emb = _encode(family, pipe, ["a red car", "a small blue robot dancing on the beach"])
    mask = emb["prompt_attention_mask"].bool()
    assert (~mask).any() and len(set(mask.sum(1).tolist())) == 2  # padding present, two valid lengths
    garbage = dict(emb)
    noise = torch.randn(emb["prompt_embeds"].shape, generator=torch.Generator().manual_seed(7)) * 10
    garbage["prompt_embeds"] = torch.where(mask.unsqueeze(-1), emb["prompt_embeds"], noise)
    kwargs = fam.kwargs(False)
    kwargs.pop("prompt")
    if accelerated:
        pipe.enable_acceleration(schedule=HALF)
    a = _run(pipe, dict(kwargs, **emb))
    b = _run(pipe, dict(kwargs, **garbage))
    if accelerated:
        assert vdit_accel.summary(pipe)["steps"][1]["attention_queries"] < vdit_accel.summary(pipe)["steps"][1][
            "dense_tokens"]
    assert torch.equal(a, b), f"padded text changed the output (max diff {(a - b).abs().max().item():.3g})"


@pytest.mark.parametrize("family", ["wan22", "wan22_i2v"])
def test_wan22_experts_keep_their_own_steps_and_caches(family):
    pipe = _pipe(family)
    kwargs = FAMILIES[family].kwargs(True)
    boundary = pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps
    pipe.enable_acceleration(schedule=HALF)
    _run(pipe, kwargs)
    timesteps = pipe.scheduler.timesteps
    high = [i for i, t in enumerate(timesteps) if t >= boundary]
    low = [i for i, t in enumerate(timesteps) if t < boundary]
    assert high and low, "the tiny schedule must cross the boundary"
    rt1, rt2 = vdit_accel.get_runtime(pipe), vdit_accel.get_runtime(pipe, "transformer_2")
    assert rt1 is not rt2 and rt1.budgets == rt2.budgets == HALF
    assert sorted({r.step for r in rt1.records}) == high
    assert sorted({r.step for r in rt2.records}) == low
    assert {r.context for r in rt1.records} == {r.context for r in rt2.records} == {"cond", "uncond"}
    # a second run starts both experts afresh (records and caches reset; the run is reproducible)
    first = _run(pipe, kwargs)
    second = _run(pipe, kwargs)
    assert torch.equal(first, second)
    assert sorted({r.step for r in rt2.records}) == low


def test_joint_families_leave_text_only_modules_alone():
    pipe = _pipe("hunyuan_video")
    refiner = {n: p for n, p in pipe.transformer.attn_processors.items() if n.startswith("context_embedder")}
    pipe.enable_acceleration(schedule=HALF)
    after = pipe.transformer.attn_processors
    assert refiner and all(after[n] is p for n, p in refiner.items())
    blocks = [n for n in after if not n.startswith("context_embedder")]
    assert blocks and all(type(after[n]).__module__.startswith("vdit_accel") for n in blocks)
    # Mochi has no set_attn_processor: the processor attribute is swapped and restored
    mochi = _pipe("mochi")
    original = mochi.transformer.transformer_blocks[0].attn1.processor
    mochi.enable_acceleration(schedule=HALF)
    assert type(mochi.transformer.transformer_blocks[0].attn1.processor).__module__.startswith("vdit_accel")
    mochi.disable_acceleration()
    assert mochi.transformer.transformer_blocks[0].attn1.processor is original


def test_ltx_grid_comes_from_forward_kwargs():
    pipe = _pipe("ltx")
    pipe.enable_acceleration(schedule=HALF)
    _run(pipe, FAMILIES["ltx"].kwargs(False))
    rt = vdit_accel.get_runtime(pipe)
    f, h, w = rt.grid
    assert f * h * w == rt.records[0].video_tokens
    with pytest.raises(ValueError, match="num_frames"):
        pipe.transformer(hidden_states=torch.randn(1, f * h * w, 8), encoder_hidden_states=torch.randn(1, 4, 32),
                         timestep=torch.tensor([500]), encoder_attention_mask=torch.ones(1, 4))


def test_ltx_condition_grid_comes_from_video_coords_with_prepended_condition_frames():
    """``LTXConditionPipeline`` passes ``video_coords`` (no ``num_frames``/``height``/``width``); an image condition at
    ``frame_index > 0`` prepends one latent frame of tokens. The grid counts it, budget 1.0 equals dense and budget
    0.5 halves the queries."""
    pipe = _pipe("ltx_condition")
    kwargs = FAMILIES["ltx_condition"].kwargs(True, image=_image(), frame_index=4)
    dense = _run(pipe, kwargs)
    pipe.enable_acceleration(schedule=[1.0] * STEPS)
    full = _run(pipe, kwargs)
    rt = vdit_accel.get_runtime(pipe)
    assert rt.grid == (4, 8, 8) and rt.records[0].video_tokens == 256  # 3 video frames + 1 conditioning frame
    torch.testing.assert_close(full, dense, rtol=1e-4, atol=1e-5)
    pipe.disable_acceleration()
    pipe.enable_acceleration(schedule=HALF)
    _run(pipe, kwargs)
    step = vdit_accel.summary(pipe)["steps"][1]
    assert step["attention_queries"] * 2 == step["dense_tokens"] > 0
    with pytest.raises(ValueError, match="video_coords"):
        pipe.transformer(hidden_states=torch.randn(1, 10, 8), encoder_hidden_states=torch.randn(1, 4, 32),
                         timestep=torch.tensor([500]), encoder_attention_mask=torch.ones(1, 4),
                         video_coords=torch.stack([torch.zeros(10), torch.arange(10) % 2, torch.arange(10) // 5])[None])


def test_pipelines_without_cache_context_keep_one_cache_per_call():
    """ChronoEdit runs CFG as two calls per step without ``cache_context``: the k-th call of each step gets its own
    implicit context, so the unconditional call neither resets nor feeds the conditional call's caches."""
    pipe = _pipe("chronoedit")
    pipe.enable_acceleration(schedule=HALF)
    _run(pipe, FAMILIES["chronoedit"].kwargs(True))
    records = vdit_accel.get_runtime(pipe).records
    assert [(r.step, r.context) for r in records] == [(s, c) for s in range(STEPS) for c in ("call0", "call1")]
    assert all(r.attention_queries * 2 == r.video_tokens * r.blocks for r in records if r.step in (1, 2))


def test_unsupported_transformer_names_supported_families():
    from diffusers import AllegroPipeline, AllegroTransformer3DModel, AutoencoderKLAllegro, DDIMScheduler

    tokenizer = testing.build_offline_t5_tokenizer()
    transformer = AllegroTransformer3DModel(num_attention_heads=2, attention_head_dim=8, num_layers=1,
                                            cross_attention_dim=16, caption_channels=32, sample_height=8,
                                            sample_width=8, sample_frames=8)
    vae = AutoencoderKLAllegro(block_out_channels=(8, 8, 8, 8), norm_num_groups=2, layers_per_block=1,
                               latent_channels=4)
    pipe = AllegroPipeline(tokenizer=tokenizer, text_encoder=testing.build_tiny_t5(len(tokenizer)), vae=vae,
                           transformer=transformer, scheduler=DDIMScheduler())
    with pytest.raises(ValueError) as err:
        pipe.enable_acceleration()
    message = str(err.value)
    assert "AllegroTransformer3DModel" in message
    for name in ("WanTransformer3DModel", "CogVideoXTransformer3DModel", "HunyuanVideoTransformer3DModel",
                 "LTXVideoTransformer3DModel", "MochiTransformer3DModel"):
        assert name in message and name in supported_transformers()
    assert not vdit_accel.is_accelerated(pipe)
    assert getattr(pipe.transformer, "_diffusers_hook", None) is None  # nothing was installed


def test_refused_transformers_name_the_reason():
    """Families refused on purpose raise before anything is installed, naming the class and why."""
    from diffusers import LTX2VideoTransformer3DModel

    from vdit_accel.adapters import get_adapter
    from vdit_accel.adapters.refused import REFUSED

    transformer = LTX2VideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
        audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=1, caption_channels=16,
    )
    with pytest.raises(ValueError, match="LTX2VideoTransformer3DModel: every block couples the video and audio"):
        get_adapter(transformer)
    assert getattr(transformer, "_diffusers_hook", None) is None
    assert not set(REFUSED) & set(supported_transformers())


@pytest.mark.parametrize("family", ["hunyuan_video", "mochi"])
def test_context_parallel_plan_splits_the_tokens_it_names(family):
    """The adapters' context-parallel plans (``cp_plan``, for families diffusers has none for) name real
    modules and arguments, and every tensor they split or gather has the declared rank and the video token count on
    the split dimension (diffusers silently skips a split whose rank does not match); the text is never split."""
    import inspect

    from diffusers.hooks.context_parallel import _get_submodule_by_name
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    from vdit_accel.adapters import get_adapter

    pipe = _pipe(family)
    transformer = pipe.transformer
    adapter = get_adapter(transformer)
    plan = adapter.cp_plan
    assert plan and getattr(type(transformer), "_cp_plan", None) is None and adapter.cp_text == "whole"
    seen, handles = {}, []
    for module_id in ["", *plan]:
        module = _get_submodule_by_name(transformer, module_id)
        assert isinstance(module, torch.nn.Module), module_id

        def hook(mod, args, kwargs, output, module_id=module_id):
            bound = inspect.signature(type(mod).forward).bind(mod, *args, **kwargs).arguments
            seen.setdefault(module_id, (args, kwargs, bound, output))
        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        _run(pipe, FAMILIES[family].kwargs(False))
    finally:
        for h in handles:
            h.remove()
    args, kwargs, root, _ = seen[""]
    n_video = math.prod(adapter.grid(transformer, args, kwargs))
    n_text = root["encoder_hidden_states"].shape[1]
    checked = 0
    for module_id, entry in plan.items():
        _, _, bound, output = seen[module_id]
        if isinstance(entry, ContextParallelOutput):
            assert output.dim() == entry.expected_dims and output.shape[entry.gather_dim] == n_video, module_id
            checked += 1
            continue
        for key, spec in entry.items():
            if isinstance(key, int):
                assert spec.split_output, (module_id, key)
                values, specs = [output[key]], [spec]
            else:
                assert key in bound, f"{module_id}.forward has no argument {key!r}"
                values = list(bound[key]) if isinstance(spec, (list, tuple)) else [bound[key]]
                specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
            assert len(values) == len(specs) and all(isinstance(s, ContextParallelInput) for s in specs)
            assert not str(key).startswith("encoder_"), "the text stays whole on every rank"
            for value, s in zip(values, specs):
                assert value.dim() == s.expected_dims, (module_id, key, tuple(value.shape))
                assert value.shape[s.split_dim] == n_video != n_text, (module_id, key, tuple(value.shape))
                checked += 1
    assert checked >= 4
