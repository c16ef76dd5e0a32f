"""`vdit-accel vbench`: the offline path end to end on a tiny random pipeline, input checks, and the dimension plan.

The real-VBench path runs only where a VBench venv exists: set VDIT_VBENCH_VENV=DIR (create one with
`vdit-accel vbench --setup-venv DIR ...`).
"""

import json
import os

import pytest

from vdit_accel import cli
from vdit_accel.quality import temporal_flicker
from vdit_accel.quality import vbench_runner as vr

TINY = ["--model", "tiny-wan", "--steps", "2", "--height", "32", "--width", "32", "--frames", "5", "--device", "cpu"]


@pytest.fixture
def empty_vbench_cache(tmp_path, monkeypatch):
    cache = tmp_path / "vbench_cache"
    cache.mkdir()
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(cache))
    return cache


def _prompt_file(tmp_path, text="a red car on the beach\n"):
    f = tmp_path / "prompts.txt"
    f.write_text("# comment\n\n" + text)
    return str(f)


def test_offline_run_writes_videos_table_and_skip_reasons(tmp_path, empty_vbench_cache):
    out = tmp_path / "out"
    assert cli.main(["vbench", "--prompts", _prompt_file(tmp_path), "--out", str(out), *TINY]) == 0
    name = "a red car on the beach-0.mp4"  # VBench's {prompt}-{i}.mp4 naming
    for sub in ("dense", "accelerated"):
        assert (out / sub / name).is_file()
    report = json.loads((out / "vbench_results.json").read_text())
    dims = report["dimensions"]
    assert list(dims) == list(vr.ALL_DIMENSIONS)
    assert report["dimensions_ran"] == ["temporal_flickering"]
    flick = dims["temporal_flickering"]
    assert flick["status"] == "ran" and "formula" in flick["source"]
    expected = temporal_flicker(vr.read_video_uint8(str(out / "dense" / name)))
    assert flick["dense"] == pytest.approx(expected, abs=1e-12)
    assert 0.0 < flick["accelerated"] <= 1.0
    reasons = report["dimensions_skipped"]
    assert set(reasons) == set(vr.ALL_DIMENSIONS) - {"temporal_flickering"}
    assert "VBench is not installed" in reasons["subject_consistency"]
    assert "dino_vitbase16_pretrain.pth" in reasons["subject_consistency"]
    assert "amt-s.pth" in reasons["motion_smoothness"]
    for d in vr.STANDARD_SUITE_ONLY:
        assert "vbench-standard" in reasons[d]
    fid = report["fidelity"]
    assert fid["psnr"] > 10 and 0 < fid["ssim"] <= 1 + 1e-5
    assert (fid["lpips"] is None) == (fid["lpips_unavailable_reason"] is not None)
    assert report["timing"]["dense_seconds"] > 0 and report["timing"]["accelerated_seconds"] > 0
    table = (out / "vbench_table.md").read_text()
    for d in vr.ALL_DIMENSIONS:
        assert f"| {d} |" in table
    assert "PSNR (dB)" in table and "skipped: " in table


@pytest.mark.parametrize("extra, message", [
    (["--dimensions", "temporal_flicker"], "Unknown VBench dimension"),
    (["--prompts", "vbench-standard"], "needs VBench's prompt list"),
    (["--prompts", "/nonexistent/prompts.txt"], "no such file"),
    (["--samples", "0"], "--samples must be >= 1"),
])
def test_bad_input_fails_before_generating(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    args = ["vbench", "--prompts", _prompt_file(tmp_path), "--out", str(out), *TINY, *extra]
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_prompt_that_cannot_be_a_file_name(tmp_path, capsys):
    assert cli.main(["vbench", "--prompts", _prompt_file(tmp_path, "a cat/dog\n"), "--out", str(tmp_path / "o"),
                     *TINY]) == 2
    assert "must not contain '/'" in capsys.readouterr().err


def test_plan_with_vbench_weights_and_downloads(tmp_path):
    cache = tmp_path / "c"
    (cache / "clip_model").mkdir(parents=True)
    (cache / "clip_model" / "ViT-B-32.pt").write_bytes(b"x")
    dims = ["background_consistency", "imaging_quality", "temporal_flickering", "scene"]
    plans = {p.dimension: p for p in vr.plan_dimensions(dims, vbench_available=True, standard_suite=False,
                                                        torchvision_ok=True, cache_dir=str(cache))}
    assert plans["background_consistency"].run_with == "vbench"  # its weights are present
    assert plans["temporal_flickering"].run_with == "vbench"
    assert "musiq_spaq_ckpt-358bb6af.pth" in plans["imaging_quality"].reason
    assert "--allow-downloads" in plans["imaging_quality"].reason
    assert "vbench-standard" in plans["scene"].reason
    plans = vr.plan_dimensions(dims, vbench_available=True, standard_suite=True, torchvision_ok=False,
                               torchvision_error="RuntimeError: operator torchvision::nms does not exist",
                               cache_dir=str(cache))
    assert [p.dimension for p in plans if p.run_with] == ["temporal_flickering"]
    assert all("torchvision::nms" in p.reason for p in plans if not p.run_with)
    with pytest.raises(ValueError, match="Valid:"):
        vr.validate_dimensions(["nope"])


@pytest.mark.skipif(not os.environ.get("VDIT_VBENCH_VENV"), reason="no VBench venv (set VDIT_VBENCH_VENV=DIR)")
def test_real_vbench_temporal_flickering(tmp_path, empty_vbench_cache):
    out = tmp_path / "out"
    assert cli.main(["vbench", "--prompts", _prompt_file(tmp_path), "--out", str(out), *TINY,
                     "--vbench-venv", os.environ["VDIT_VBENCH_VENV"], "--dimensions", "temporal_flickering",
                     "subject_consistency"]) == 0
    report = json.loads((out / "vbench_results.json").read_text())
    flick = report["dimensions"]["temporal_flickering"]
    assert flick["source"].startswith("VBench 0.1.5")
    # VBench (cv2 decoding) and vdit_accel's formula (imageio decoding) on the same mp4 files
    assert flick["dense"] == pytest.approx(flick["vdit_accel_formula"]["dense"], abs=1e-6)
    assert report["dimensions"]["subject_consistency"]["status"] == "skipped"
