"""Measure how well a tiny-shapes model follows its prompts (and how well its VAE round-trips clips).

    python -m vdit_accel.tiny_model.evaluate [--model-dir DIR] [--pairs 16] [--seed 1000] [--vae]

Generation: ``--pairs`` random (caption, seed) pairs drawn from the training vocabulary with ``--seed`` (held out:
the training captions are drawn from other seeds, and every caption is a new noise sample), generated with
:data:`DEFAULT_GENERATION_KWARGS`, read back with :func:`analysis.analyse_clip` (object = saturated pixels). With
``--vae``, real rendered clips are encoded and decoded first: the upper bound of what the transformer can reach
through this VAE, with the PSNR of every frame (the causal VAE's chunks show as steps).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from . import DEFAULT_GENERATION_KWARGS, load_default_pipeline
from .analysis import analyse_clip
from .data import caption_for, make_dataset, parse_caption, sample_spec

__all__ = ["heldout_pairs", "prompt_following", "vae_round_trip"]


def heldout_pairs(n: int, seed: int = 1000) -> list[tuple[str, int]]:
    """``n`` (caption, noise seed) pairs drawn from the training vocabulary."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        s = sample_spec(rng)
        out.append((caption_for(s.color, s.shape, s.direction, s.background), seed + i))
    return out


def _hits(videos, prompts) -> dict:
    rows = []
    for v, p in zip(videos, prompts):
        got, want = analyse_clip(v), parse_caption(p)
        rows.append({"prompt": p, "color": got["color"], "direction": got["direction"],
                     "color_ok": got["color"] == want["color"], "direction_ok": got["direction"] == want["direction"]})
    return {"color": sum(r["color_ok"] for r in rows), "direction": sum(r["direction_ok"] for r in rows),
            "n": len(rows), "rows": rows}


@torch.no_grad()
def prompt_following(pipe, pairs: list[tuple[str, int]], batch: int = 8, **overrides) -> dict:
    """Colour and direction hits of ``pipe`` on ``pairs`` (one generator per video, so batching changes nothing)."""
    kw = {**DEFAULT_GENERATION_KWARGS, **overrides}
    videos, t0 = [], time.perf_counter()
    for i in range(0, len(pairs), batch):
        chunk = pairs[i : i + batch]
        videos.extend(pipe([p for p, _ in chunk], generator=[torch.Generator().manual_seed(s) for _, s in chunk],
                           output_type="pt", **kw).frames)
    res = _hits(videos, [p for p, _ in pairs])
    res["seconds"] = time.perf_counter() - t0
    return res


@torch.no_grad()
def vae_round_trip(vae, n: int = 16, seed: int = 4242) -> dict:
    """Encode + decode ``n`` rendered 17-frame clips: colour/direction hits, and PSNR in dB ([0, 1] range,
    :func:`vdit_accel.quality.psnr`): per clip then averaged, and per frame index over all clips together."""
    from ..quality import psnr
    from .train import _to_model

    videos, captions, _ = make_dataset(n, seed=seed)
    x = _to_model(videos)  # [N, 3, F, H, W] in [-1, 1], as the VAE was trained
    rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    rec01, x01 = ((t + 1) / 2 for t in (rec, x))
    res = _hits(rec01.permute(0, 2, 1, 3, 4), captions)
    res["psnr_db"] = psnr(rec01.permute(0, 2, 1, 3, 4), x01.permute(0, 2, 1, 3, 4))
    res["psnr_per_frame_db"] = [round(psnr(rec01[:, :, f], x01[:, :, f]), 1) for f in range(x.shape[2])]
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", default=None, help="a save_pretrained folder (default: the bundled model)")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--vae", action="store_true", help="also round-trip rendered clips through the VAE")
    ap.add_argument("--json", default=None, help="write the full result here")
    args = ap.parse_args(argv)
    pipe = load_default_pipeline(model_dir=args.model_dir)
    pipe.set_progress_bar_config(disable=True)
    out = {}
    if args.vae:
        out["vae"] = vae_round_trip(pipe.vae)
        v = out["vae"]
        print(f"VAE round trip: colour {v['color']}/{v['n']}, direction {v['direction']}/{v['n']}, "
              f"PSNR {v['psnr_db']:.1f} dB, per frame {v['psnr_per_frame_db']}")
    out["generation"] = g = prompt_following(pipe, heldout_pairs(args.pairs, args.seed))
    for r in g["rows"]:
        print(f"  {r['prompt']:<58} colour {str(r['color']):<7}{'ok' if r['color_ok'] else '--'}  "
              f"direction {str(r['direction']):<6}{'ok' if r['direction_ok'] else '--'}")
    print(f"generation: colour {g['color']}/{g['n']}, direction {g['direction']}/{g['n']} ({g['seconds']:.1f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
