"""The bundled model's training script, at a few steps: reproducible from the seed, staged runs equal one run,
and the result loads with ``from_pretrained`` like the shipped weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from vdit_accel.tiny_model import load_default_pipeline
from vdit_accel.tiny_model.train import main as train_main

TINY = ["--seed", "3", "--minutes", "300", "--vae-steps", "2", "--vae-long-steps", "2", "--dit-steps", "3",
        "--num-clips", "4", "--vae-batch", "1", "--dit-batch", "2", "--threads", "1"]
WEIGHTS = ["vae/diffusion_pytorch_model.safetensors", "transformer/diffusion_pytorch_model.safetensors",
           "text_encoder/model.safetensors"]


@pytest.fixture(autouse=True)
def _keep_thread_count():
    n = torch.get_num_threads()  # the script sets the process's thread count
    yield
    torch.set_num_threads(n)


def _weights(folder) -> dict[str, torch.Tensor]:
    out = {}
    for w in WEIGHTS:
        out.update({f"{w}:{k}": v for k, v in load_file(str(folder / w)).items()})
    return out


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("all")
    n = torch.get_num_threads()
    try:
        train_main(["--out", str(out), *TINY])
    finally:
        torch.set_num_threads(n)
    return out


def test_one_run_writes_a_loadable_pipeline_and_its_log(one_run, capsys):
    log = json.loads((one_run / "training_log.json").read_text())
    assert log["vae"]["steps"] == 4 and log["dit"]["steps"] == 3 and log["encode"]["clips"] == 4
    assert [p["steps"] for p in log["vae"]["phases"]] == [2, 2]
    assert not log["vae"]["time_limited"] and not log["dit"]["time_limited"]
    assert log["final"]["dit_loss"] > 0 and log["final"]["vae_psnr_db"] > 0
    assert not (one_run / "training_log_vae.json").exists()  # folded into training_log.json
    pipe = load_default_pipeline(model_dir=one_run)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("a red circle moving left on a black background", height=32, width=32, num_frames=5,
                  num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 5, 3, 32, 32) and torch.isfinite(frames).all()
    assert pipe.vae.config.latents_std != [1.0] * 16  # normalisation written from the encoded clips


def test_same_seed_in_stages_gives_the_same_weights(one_run, tmp_path, capsys):
    train_main(["--out", str(tmp_path), "--stage", "vae", *TINY])
    assert (tmp_path / "training_log_vae.json").exists() and not (tmp_path / "model_index.json").exists()
    train_main(["--out", str(tmp_path), "--stage", "vae", *TINY])  # both phases done: nothing is retrained
    assert "already trained" in capsys.readouterr().out
    train_main(["--out", str(tmp_path), "--stage", "dit", *TINY])
    a, b = _weights(one_run), _weights(tmp_path)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


def test_dit_stage_needs_a_trained_vae(tmp_path):
    with pytest.raises(SystemExit, match="run --stage vae"):
        train_main(["--out", str(tmp_path), "--stage", "dit", *TINY])


def test_bad_clip_length_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_main(["--out", str(tmp_path / "x"), *TINY, "--vae-frames", "8"])
    assert "--vae-frames must be 4k+1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
