"""`vdit-accel generate` end to end on a tiny offline pipeline: both mp4s and the JSON report are written."""

import json
import os
import subprocess
import sys

import imageio.v3 as iio
import pytest

from vdit_accel.cli import main


def test_generate_writes_videos_and_report(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["generate", "--model", "tiny-wan", "--prompt", "a dog dancing", "--steps", "5", "--speedup", "1.5",
               "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    for key in ("dense_seconds", "accelerated_seconds", "speedup", "quality", "acceleration"):
        assert key in report
    assert report["speedup"] == pytest.approx(report["dense_seconds"] / report["accelerated_seconds"])
    assert 0 < report["quality"]["psnr"] and -1 <= report["quality"]["ssim"] <= 1
    assert report["acceleration"]["budgets"][0] == 1.0 and min(report["acceleration"]["budgets"]) < 1.0
    for name in ("dense.mp4", "accelerated.mp4"):
        frames = iio.imread(out / name)
        assert frames.shape == (17, 64, 64, 3)
    assert "speedup" in capsys.readouterr().out


def test_generate_with_run_time_decisions(tmp_path):
    """`--schedule auto`: the report holds the budgets the run decided (computed and skipped steps)."""
    out = tmp_path / "out"
    rc = main(["generate", "--model", "tiny-wan", "--prompt", "a dog dancing", "--steps", "10", "--schedule", "auto",
               "--out", str(out)])
    assert rc == 0
    budgets = json.loads((out / "report.json").read_text())["acceleration"]["budgets"]
    assert len(budgets) == 10 and set(budgets) == {0.0, 1.0} and budgets[:3] == [1.0] * 3


def test_generate_bad_input_fails_before_loading(tmp_path, capsys):
    rc = main(["generate", "--model", "tiny-wan", "--prompt", "x", "--speedup", "0.3", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "speedup" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    bad = tmp_path / "bad.json"
    bad.write_text("[1.0, oops]")
    rc = main(["generate", "--model", "tiny-wan", "--prompt", "x", "--schedule", str(bad), "--out", str(tmp_path / "o")])
    assert rc == 2 and "Corrupt schedule file" in capsys.readouterr().err


def test_console_script_help():
    res = subprocess.run([sys.executable, "-m", "vdit_accel.cli", "--help"], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0 and "generate" in res.stdout


def test_compare_times_short_runs_again_interleaved_and_keeps_the_first_frames():
    import torch

    import vdit_accel
    from vdit_accel import AccelerationConfig, testing
    from vdit_accel.commands.compare import GenerationSettings, compare

    pipe = testing.build_tiny_wan_pipeline()
    settings = GenerationSettings(prompt="a dog dancing", num_inference_steps=4, height=32, width=32, num_frames=5,
                                  max_sequence_length=16)
    config = AccelerationConfig(speedup=1.5)
    once = compare(pipe, settings, config, progress=False, max_runs=1)
    three = compare(pipe, settings, config, progress=False, min_seconds=1e9, max_runs=3)
    assert (once.runs, three.runs) == (1, 3)
    assert three.report()["timed_runs"] == 3 and "median of 3" in three.report()["speedup_kind"]
    assert torch.equal(once.accelerated.frames, three.accelerated.frames)
    assert torch.equal(once.dense.frames, three.dense.frames)
    assert three.acceleration["budgets"] == once.acceleration["budgets"]
    assert not vdit_accel.is_accelerated(pipe)  # every accelerated run was undone
