"""``vdit-accel generate``: dense and accelerated video side by side, as mp4 files and a JSON report."""

from __future__ import annotations

import argparse
import json
import os

import torch

HELP = "Generate a video dense and accelerated (same seed); write both mp4s and a JSON report (times, PSNR/SSIM)."


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="'default' (bundled tiny model), 'tiny-wan', 'tiny-cogvideox', a local folder or a hub id")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="num_inference_steps (default: the model's default)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--frames", type=int, default=None, help="num_frames")
    p.add_argument("--guidance-scale", type=float, default=None)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", required=True)
    add_model_arguments(p)
    add_generation_arguments(p)
    p.add_argument("--speedup", type=float, default=None, help="target transformer speedup, e.g. 2.0")
    p.add_argument("--schedule", default=None, help="schedule JSON file (from `vdit-accel search`)")
    p.add_argument("--out", default="vdit_out", help="output folder")
    p.add_argument("--fps", type=int, default=8)


def settings_from_args(args, pipe):
    from ..compare import GenerationSettings
    from ..loading import TINY_MODELS

    defaults: dict = {}
    if args.model in (None, "", "default"):
        from ..tiny_model import DEFAULT_GENERATION_KWARGS

        defaults = dict(DEFAULT_GENERATION_KWARGS)
    elif args.model in TINY_MODELS:
        defaults = dict(height=64, width=64, num_frames=17, num_inference_steps=10, guidance_scale=6.0,
                        max_sequence_length=16)
    pick = lambda value, key: value if value is not None else defaults.get(key)  # noqa: E731
    return GenerationSettings(
        prompt=args.prompt, negative_prompt=args.negative_prompt, seed=args.seed,
        num_inference_steps=pick(args.steps, "num_inference_steps") or 50,
        height=pick(args.height, "height"), width=pick(args.width, "width"),
        num_frames=pick(args.frames, "num_frames"), guidance_scale=pick(args.guidance_scale, "guidance_scale"),
        max_sequence_length=defaults.get("max_sequence_length"),
    )


def run(args) -> int:
    from ..compare import compare, save_video
    from ..config import AccelerationConfig
    from ..loading import load_pipeline

    config = AccelerationConfig(speedup=args.speedup, schedule=args.schedule)  # validated before any loading
    if not args.prompt.strip():
        raise ValueError("--prompt is empty; describe the video, e.g. --prompt 'a red circle moving right'.")
    pipe = load_pipeline(args.model, getattr(torch, args.dtype), args.device)
    settings = settings_from_args(args, pipe)
    settings.validate()
    os.makedirs(args.out, exist_ok=True)
    print(f"[vdit-accel] model={args.model} steps={settings.num_inference_steps} seed={settings.seed}")
    print("[vdit-accel] dense run:")
    result = compare(pipe, settings, config, progress=True)
    save_video(result.dense.frames, os.path.join(args.out, "dense.mp4"), args.fps)
    save_video(result.accelerated.frames, os.path.join(args.out, "accelerated.mp4"), args.fps)
    report = dict(model=args.model, prompt=settings.prompt, seed=settings.seed,
                  num_inference_steps=settings.num_inference_steps, height=settings.height, width=settings.width,
                  num_frames=settings.num_frames, device=args.device, dtype=args.dtype, **result.report())
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=2, default=float)
    q = result.metrics
    print(f"[vdit-accel] dense {result.dense.seconds:.2f}s  accelerated {result.accelerated.seconds:.2f}s  "
          f"speedup {result.speedup:.2f}x (measured)  PSNR {q.get('psnr', float('nan')):.2f} dB  "
          f"SSIM {q.get('ssim', float('nan')):.4f}")
    print(f"[vdit-accel] wrote {args.out}/dense.mp4, {args.out}/accelerated.mp4, {args.out}/report.json")
    return 0
