"""The bundled tiny text-to-video model: loads offline, generates in seconds, follows its prompts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from vdit_accel.tiny_model import (
    DEFAULT_GENERATION_KWARGS,
    DEFAULT_MODEL_DIR,
    EXAMPLE_PROMPTS,
    load_default_pipeline,
)
from vdit_accel.tiny_model.analysis import analyse_clip
from vdit_accel.tiny_model.data import COLORS, DIRECTIONS, make_dataset, parse_caption, render_clip, sample_spec

# (prompt, seed) pairs fixed before looking at any output: every colour, every direction, every background.
PROMPT_CASES = [
    ("a red circle moving right on a black background", 0),
    ("a blue square moving left on a gray background", 1),
    ("a yellow triangle moving down on a checkered background", 2),
    ("a green diamond moving up on a striped background", 3),
    ("a purple square moving right on a checkered background", 4),
    ("a green circle moving left on a black background", 5),
    ("a red diamond moving down on a gray background", 6),
    ("a blue circle moving up on a black background", 7),
]


@pytest.fixture(scope="module")
def pipe():
    p = load_default_pipeline()
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def generated(pipe):
    """All PROMPT_CASES in one batched call (one generator per video, so each equals its own single run)."""
    prompts = [p for p, _ in PROMPT_CASES]
    gens = [torch.Generator().manual_seed(s) for _, s in PROMPT_CASES]
    t0 = time.perf_counter()
    frames = pipe(prompts, generator=gens, output_type="pt", **DEFAULT_GENERATION_KWARGS).frames
    return frames, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------- assets
def test_assets_folder_is_complete_and_small():
    index = json.loads((DEFAULT_MODEL_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    for sub in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (DEFAULT_MODEL_DIR / sub).is_dir(), sub
    weights = list(DEFAULT_MODEL_DIR.rglob("*.safetensors"))
    assert len(weights) == 3 and not list(DEFAULT_MODEL_DIR.rglob("*.bin"))
    total = sum(f.stat().st_size for f in DEFAULT_MODEL_DIR.rglob("*") if f.is_file())
    assert total <= 30 * 2**20, f"bundled model is {total / 2**20:.1f} MB (limit 30 MB)"
    assert (DEFAULT_MODEL_DIR / "README.md").is_file()


def test_missing_assets_error_says_how_to_retrain(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m vdit_accel.tiny_model.train --out"):
        load_default_pipeline(model_dir=tmp_path / "nothing-here")


def test_loads_offline_in_a_fresh_process():
    """HF_HUB_OFFLINE=1 in a clean interpreter: from_pretrained must not need the network."""
    code = (
        "import time, torch; from vdit_accel.tiny_model import load_default_pipeline as L, "
        "DEFAULT_GENERATION_KWARGS as K; p = L(); p.set_progress_bar_config(disable=True); "
        "t = time.perf_counter(); f = p('a red circle moving left on a black background', "
        "**{**K, 'num_inference_steps': 4}, output_type='pt', generator=torch.Generator().manual_seed(0)).frames; "
        "print(tuple(f.shape), bool(torch.isfinite(f).all()))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "(1, 17, 3, 64, 64) True"


def test_pipeline_structure(pipe):
    from diffusers import WanPipeline

    assert isinstance(pipe, WanPipeline)  # TinyShapesWanPipeline: WanPipeline with the trained size as defaults
    assert type(pipe.transformer).__name__ == "WanTransformer3DModel"
    assert type(pipe.vae).__name__ == "AutoencoderKLWan"
    assert type(pipe.text_encoder).__name__ == "UMT5EncoderModel"
    assert pipe.vae_scale_factor_spatial == 4 and pipe.vae_scale_factor_temporal == 4
    assert pipe.transformer.config.text_dim == pipe.text_encoder.config.d_model
    # 17×64×64 → latent 5×16×16 → patch (1,2,2) → 5×8×8 = 320 video tokens
    k = DEFAULT_GENERATION_KWARGS
    p_t, p_h, p_w = pipe.transformer.config.patch_size
    f = (k["num_frames"] - 1) // 4 + 1
    tokens = (f // p_t) * (k["height"] // 4 // p_h) * (k["width"] // 4 // p_w)
    assert tokens == 320


def test_tokenizer_knows_every_caption_word(pipe):
    for prompt in EXAMPLE_PROMPTS + [p for p, _ in PROMPT_CASES]:
        ids = pipe.tokenizer(prompt).input_ids
        assert pipe.tokenizer.unk_token_id not in ids, prompt
        assert ids[-1] == pipe.tokenizer.eos_token_id
        assert len(ids) <= DEFAULT_GENERATION_KWARGS["max_sequence_length"]
    assert pipe.tokenizer("A RED Circle").input_ids == pipe.tokenizer("a red circle").input_ids


# ------------------------------------------------------------------------------------------------- generation
def test_generates_in_seconds(generated):
    frames, seconds = generated
    assert frames.shape == (len(PROMPT_CASES), 17, 3, 64, 64)
    assert torch.isfinite(frames).all() and frames.min() >= 0 and frames.max() <= 1
    # 8 videos, 20 steps with CFG; about 1 s per video on one free core. Generous for busy CI machines.
    assert seconds < 20 * len(PROMPT_CASES), f"{seconds:.1f}s for {len(PROMPT_CASES)} videos"


def test_same_seed_same_video(pipe):
    kw = {**DEFAULT_GENERATION_KWARGS, "num_inference_steps": 3, "output_type": "pt"}
    a = pipe(EXAMPLE_PROMPTS[0], generator=torch.Generator().manual_seed(11), **kw).frames
    b = pipe(EXAMPLE_PROMPTS[0], generator=torch.Generator().manual_seed(11), **kw).frames
    assert torch.equal(a, b)


def test_videos_follow_prompt_colour(generated):
    frames, _ = generated
    results = [(analyse_clip(v)["color"], parse_caption(p)["color"]) for v, (p, _) in zip(frames, PROMPT_CASES)]
    hits = sum(got == want for got, want in results)
    assert hits >= 6, f"colour matched in {hits}/8: {results}"


def test_videos_follow_prompt_direction(generated):
    frames, _ = generated
    results = [(analyse_clip(v)["direction"], parse_caption(p)["direction"]) for v, (p, _) in zip(frames, PROMPT_CASES)]
    hits = sum(got == want for got, want in results)
    assert hits >= 6, f"direction matched in {hits}/8: {results}"


# ------------------------------------------------------------------------------------------------- data + analysis
def test_dataset_is_reproducible_and_captions_match():
    v1, c1, m1 = make_dataset(6, seed=123, num_frames=9)
    v2, c2, m2 = make_dataset(6, seed=123, num_frames=9)
    assert np.array_equal(v1, v2) and c1 == c2 and np.array_equal(m1, m2)
    assert not np.array_equal(v1, make_dataset(6, seed=124, num_frames=9)[0])
    for cap in c1:
        parsed = parse_caption(cap)
        assert None not in parsed.values(), cap


@pytest.mark.parametrize("direction", list(DIRECTIONS))
@pytest.mark.parametrize("color", list(COLORS))
def test_analysis_reads_ground_truth_clips(color, direction):
    """The readers used above are right on the training distribution itself."""
    rng = np.random.default_rng(hash((color, direction)) % 2**32)
    for background in ("black", "checkered"):
        spec = sample_spec(rng, color=color, direction=direction, background=background)
        video, mask = render_clip(spec)
        res = analyse_clip(video)
        assert res["color"] == color and res["direction"] == direction, (spec, res)
        assert spec.start != spec.end and mask.max() == 1.0


def test_sample_spec_rejects_unknown_words():
    with pytest.raises(ValueError, match=r"`color` must be one of"):
        sample_spec(np.random.default_rng(0), color="orange")
