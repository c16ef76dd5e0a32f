"""Known-value tests for vdit_accel.quality (PSNR, SSIM, LPIPS availability, VBench temporal flickering)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from vdit_accel.quality import (
    compare_videos,
    lpips,
    lpips_unavailable_reason,
    psnr,
    ssim,
    temporal_flicker,
    to_video_tensor,
)


def _rand_video(seed=0, f=5, c=3, h=32, w=32):
    return torch.rand(f, c, h, w, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------- layouts
def test_layouts_are_equivalent():
    v = _rand_video()
    u8 = (v.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # [F, H, W, C] uint8
    t_from_np = to_video_tensor(u8)
    assert t_from_np.shape == (1, 5, 3, 32, 32) and t_from_np.dtype == torch.float32
    assert torch.allclose(t_from_np[0], v, atol=0.5 / 255 + 1e-6)
    # numpy float channel-last == torch float channel-first
    assert torch.equal(to_video_tensor(v.permute(0, 2, 3, 1).numpy()), to_video_tensor(v))
    # batched [B, F, C, H, W] stays as is
    assert to_video_tensor(v[None].repeat(2, 1, 1, 1, 1)).shape == (2, 5, 3, 32, 32)
    # mixing layouts in one call is fine
    assert psnr(u8, v) > 50


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(3, 32, 32), r"`a` must be a tensor video"),
        (np.zeros((4, 8, 8, 5), np.uint8), r"`a` \(numpy\) must be channel-last"),
        (torch.zeros(4, 3, 8, 8, dtype=torch.int32), r"`a` must be float"),
        ([1, 2, 3], r"`a` must be a torch.Tensor or numpy.ndarray"),
    ],
)
def test_bad_inputs_name_the_argument(bad, match):
    with pytest.raises((TypeError, ValueError), match=match):
        psnr(bad, _rand_video())


def test_mismatched_shapes_name_both_arguments():
    with pytest.raises(ValueError, match=r"`a` and `b` must have the same video shape.*`a` \(1, 5, 3, 32, 32\).*"
                                         r"`b` \(1, 5, 3, 16, 16\)"):
        ssim(_rand_video(), _rand_video(h=16, w=16))


# ----------------------------------------------------------------------------------------------- PSNR
def test_psnr_identical_is_inf():
    v = _rand_video()
    assert psnr(v, v.clone()) == math.inf


def test_psnr_constant_offset():
    a = torch.full((4, 3, 16, 16), 0.3)
    assert psnr(a, a + 0.1) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01
    assert psnr(a, a + 0.01) == pytest.approx(40.0, abs=1e-3)
    assert psnr(a * 255, a * 255 + 0.1 * 255, data_range=255.0) == pytest.approx(20.0, abs=1e-4)
    # uint8 inputs are read in [0, 1]: offset 25/255 → 20·log10(255/25)
    u = np.zeros((3, 8, 8, 3), np.uint8)
    assert psnr(u, u + 25) == pytest.approx(20 * math.log10(255 / 25), abs=1e-6)


def test_psnr_batch_is_mean_of_videos():
    a = torch.zeros(2, 3, 3, 8, 8)
    b = a.clone()
    b[0] += 0.1  # 20 dB
    b[1] += 0.01  # 40 dB
    assert psnr(a, b) == pytest.approx(30.0, abs=1e-3)


# ----------------------------------------------------------------------------------------------- SSIM
def test_ssim_identical_is_one():
    v = _rand_video()
    assert ssim(v, v.clone()) == pytest.approx(1.0, abs=1e-6)


def test_ssim_constant_images_known_value():
    # Flat frames: structure/contrast terms are 1; luminance = (2·μa·μb + C1) / (μa² + μb² + C1), C1 = (0.01)².
    a, b = torch.full((2, 3, 24, 24), 0.2), torch.full((2, 3, 24, 24), 0.4)
    c1 = 0.01**2
    expected = (2 * 0.2 * 0.4 + c1) / (0.2**2 + 0.4**2 + c1)
    assert ssim(a, b) == pytest.approx(expected, abs=1e-5)


def test_ssim_drops_with_noise_and_handles_tiny_frames():
    v = _rand_video(h=8, w=8)  # smaller than the default 11-px window
    noisy = (v + 0.2 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    s = ssim(v, noisy)
    assert 0.0 < s < 0.95


# ----------------------------------------------------------------------------------------------- flicker
def test_flicker_static_video_is_one():
    frame = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    assert temporal_flicker(np.repeat(frame[None], 6, axis=0)) == 1.0


def test_flicker_alternating_video_hand_computed():
    # Frames alternate 0 / 51 everywhere: every consecutive MAE is 51 → (255 - 51) / 255 = 0.8.
    v = np.zeros((7, 8, 8, 3), np.uint8)
    v[1::2] = 51
    assert temporal_flicker(v) == pytest.approx(0.8, abs=1e-9)
    # Only half the pixels change by 102 → MAE 51 as well.
    w = np.zeros((4, 8, 8, 3), np.uint8)
    w[1::2, :4] = 102
    assert temporal_flicker(w) == pytest.approx(0.8, abs=1e-9)


def test_flicker_matches_vbench_formula_on_random_video():
    rng = np.random.default_rng(3)
    v = rng.integers(0, 256, (5, 12, 10, 3), dtype=np.uint8)
    # VBench 0.1.5 cal_score: np.mean(cv2.absdiff(float32, float32)) per pair, mean over pairs.
    maes = [np.mean(np.abs(v[i].astype(np.float32) - v[i + 1].astype(np.float32))) for i in range(4)]
    assert temporal_flicker(v) == pytest.approx((255.0 - np.mean(maes)) / 255.0, abs=1e-9)


def test_flicker_float_input_is_quantised_like_export_to_video():
    v = _rand_video()
    u8 = (v.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)  # diffusers.utils.export_to_video quantisation
    assert temporal_flicker(v) == temporal_flicker(u8)
    assert temporal_flicker(torch.stack([v, v])) == pytest.approx(temporal_flicker(v))


def test_flicker_needs_two_frames():
    with pytest.raises(ValueError, match="at least 2 frames"):
        temporal_flicker(np.zeros((1, 8, 8, 3), np.uint8))


# ----------------------------------------------------------------------------------------------- LPIPS / compare
def test_lpips_none_with_reason_or_zero_for_identical():
    v = _rand_video()
    val = lpips(v, v)
    if val is None:
        reason = lpips_unavailable_reason()
        assert isinstance(reason, str) and "LPIPS" in reason.upper()
    else:
        assert val == pytest.approx(0.0, abs=1e-6)


def test_compare_videos_keys_and_values():
    ref = _rand_video()
    res = compare_videos(ref, ref)
    assert set(res) == {"psnr", "ssim", "lpips", "lpips_unavailable_reason", "flicker_reference",
                        "flicker_candidate"}
    assert res["psnr"] == math.inf and res["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert res["flicker_reference"] == res["flicker_candidate"]
    assert (res["lpips"] is None) == (res["lpips_unavailable_reason"] is not None)
    worse = compare_videos(ref, (ref + 0.05).clamp(0, 1))
    assert worse["psnr"] < 30 and worse["ssim"] < 1.0


def test_import_is_lean():
    """`import vdit_accel.quality` itself pulls in no torch, pytorch_msssim, lpips or cv2 (metrics load on use).

    The parent package (owned elsewhere) is replaced by an empty namespace so only this subpackage is judged.
    """
    import vdit_accel.quality as q

    pkg_dir = os.path.dirname(os.path.dirname(q.__file__))
    code = (
        "import sys, types; parent = types.ModuleType('vdit_accel'); parent.__path__ = [%r]; "
        "sys.modules['vdit_accel'] = parent; import vdit_accel.quality as q; assert callable(q.__getattr__); "
        "print(','.join(m for m in ('torch', 'numpy', 'pytorch_msssim', 'lpips', 'cv2') if m in sys.modules))"
    ) % pkg_dir
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"`import vdit_accel.quality` pulled in {out}"
