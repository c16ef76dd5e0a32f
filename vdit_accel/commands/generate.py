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
    p.add_argument("--schedule", default=None,
                   help="schedule JSON file (from `vdit-accel search`), or `auto` (run-time decisions)")
    p.add_argument("--out", default="vdit_out", help="output folder")
    add_reuse_arguments(p)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--parallel", default=None,
                   help="sequence parallelism under torchrun: 'ulysses', 'ring' or 'ulysses=U,ring=R' (U*R = number "
                        "of processes); rank 0 writes the outputs")


def add_reuse_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("score reuse (TimeRipple, emulated: reports the saved fraction, saves no time)")
    g.add_argument("--reuse", action="store_true", help="turn on channel-level attention-score reuse")
    g.add_argument("--reuse-theta-min", type=float, default=0.2, help="threshold at the ramp start (std units)")
    g.add_argument("--reuse-theta-max", type=float, default=0.5, help="threshold after the ramp (std units)")
    g.add_argument("--reuse-i-min", type=int, default=None, help="ramp start step (default: warm-up end)")
    g.add_argument("--reuse-i-max", type=int, default=None, help="ramp end step (default: 40%% of the steps)")
    g.add_argument("--reuse-warmup", type=int, default=None, help="dense first steps (default: 20%% of the steps)")
    g.add_argument("--reuse-granularity", default="channel", choices=["channel", "group"],
                   help="reuse decision per channel or per RoPE channel group")
    g.add_argument("--no-token-selection", action="store_true", help="reuse alone (turn token selection off)")


def reuse_config_from_args(args):
    """``ReuseConfig`` from the ``--reuse*`` flags, or None without ``--reuse``."""
    if not getattr(args, "reuse", False):
        if getattr(args, "no_token_selection", False):
            raise ValueError("--no-token-selection without --reuse leaves nothing to accelerate; add --reuse.")
        return None
    from ..methods.score_reuse import ReuseConfig

    return ReuseConfig(theta_min=args.reuse_theta_min, theta_max=args.reuse_theta_max, i_min=args.reuse_i_min,
                       i_max=args.reuse_i_max, warmup_steps=args.reuse_warmup, granularity=args.reuse_granularity)


def settings_from_args(args, pipe):
    from .compare import GenerationSettings
    from .loading import TINY_MODELS

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
    if getattr(args, "parallel", None):
        from .parallel import run_cli

        return run_cli(args, _run)
    return _run(args)


def _run(args, parallel_setup=None) -> int:
    from .compare import compare, save_video
    from ..config import AccelerationConfig
    from .loading import load_pipeline

    reuse = reuse_config_from_args(args)
    extra = dict(reuse=reuse, token_selection=None) if getattr(args, "no_token_selection", False) else dict(reuse=reuse)
    config = AccelerationConfig(speedup=args.speedup, schedule=args.schedule, **extra)  # validated before loading
    if not args.prompt.strip():
        raise ValueError("--prompt is empty; describe the video, e.g. --prompt 'a red circle moving right'.")
    pipe = load_pipeline(args.model, getattr(torch, args.dtype), args.device)
    main = parallel_setup is None or parallel_setup(pipe)  # enables parallelism; True on rank 0
    settings = settings_from_args(args, pipe)
    settings.validate()
    if main:
        os.makedirs(args.out, exist_ok=True)
        print(f"[vdit-accel] model={args.model} steps={settings.num_inference_steps} seed={settings.seed}")
        print("[vdit-accel] dense run:")
    result = compare(pipe, settings, config, progress=main)
    if not main:
        return 0
    save_video(result.dense.frames, os.path.join(args.out, "dense.mp4"), args.fps)
    save_video(result.accelerated.frames, os.path.join(args.out, "accelerated.mp4"), args.fps)
    report = dict(model=args.model, prompt=settings.prompt, seed=settings.seed,
                  num_inference_steps=settings.num_inference_steps, height=settings.height, width=settings.width,
                  num_frames=settings.num_frames, device=args.device, dtype=args.dtype, **result.report())
    if parallel_setup is not None:
        report["parallel"] = parallel_setup.info
    if reuse is not None:
        from ..methods.score_reuse import reuse_summary
        from .reports import format_reuse, plot_reuse

        report["reuse"] = reuse_summary(pipe)
        report["reuse"]["plot"] = plot_reuse(report["reuse"], os.path.join(args.out, "reuse.png"))
        print(format_reuse(report["reuse"]))
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=2, default=float)
    q = result.metrics
    print(f"[vdit-accel] transformer: dense {result.dense.transformer_seconds:.2f}s  accelerated "
          f"{result.accelerated.transformer_seconds:.2f}s  speedup {result.transformer_speedup:.2f}x (measured, "
          f"wall-clock; CPU time {result.transformer_cpu_speedup:.2f}x; median of {result.runs} interleaved run(s))")
    print(f"[vdit-accel] pipeline (text encoder + transformer + VAE): dense {result.dense.seconds:.2f}s  accelerated "
          f"{result.accelerated.seconds:.2f}s  speedup {result.speedup:.2f}x (measured)  "
          f"PSNR {q.get('psnr', float('nan')):.2f} dB  SSIM {q.get('ssim', float('nan')):.4f}")
    print(f"[vdit-accel] wrote {args.out}/dense.mp4, {args.out}/accelerated.mp4, {args.out}/report.json")
    return 0
