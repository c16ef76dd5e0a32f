"""``vdit-accel vbench``: generate dense and accelerated videos named as VBench expects, score both with VBench, and
write a table of every dimension.

    vdit-accel vbench --model default --prompts prompts.txt --out vbench_out
    vdit-accel vbench --model default --prompts prompts.txt --out vbench_out --setup-venv .vbench-venv
    vdit-accel vbench --model default --prompts vbench-standard --vbench-venv .vbench-venv --max-prompts 20 --out o

Writes ``OUT/dense/{prompt}-{i}.mp4``, ``OUT/accelerated/{prompt}-{i}.mp4``, ``OUT/vbench_results.json`` and
``OUT/vbench_table.md``. See :mod:`vdit_accel.quality.vbench_runner` for what runs where.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import torch

HELP = ("Generate dense and accelerated videos for VBench prompts, score them with VBench (in its own venv) or, "
        "offline, with the weight-free dimension plus PSNR/SSIM/LPIPS against dense; write a table per dimension.")

STANDARD = "vbench-standard"
_MAX_NAME_BYTES = 240  # file names are "{prompt}-{i}.mp4"; most file systems stop at 255 bytes


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .generate import add_generation_arguments, add_model_arguments
    from ..quality.vbench_runner import ALL_DIMENSIONS

    p.add_argument("--prompts", required=True,
                   help=f"'{STANDARD}' (VBench's standard prompt suite; needs the VBench venv) or a file: one prompt "
                        f"per line (.txt; blank lines and lines starting with # are ignored) or a JSON list")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dimensions", nargs="+", default=None, metavar="DIM",
                   help=f"VBench dimensions (default: all 16): {' '.join(ALL_DIMENSIONS)}")
    add_model_arguments(p)
    add_generation_arguments(p)
    p.add_argument("--speedup", type=float, default=None, help="target transformer speedup of the accelerated run")
    p.add_argument("--schedule", default=None, help="schedule JSON file (from `vdit-accel search`)")
    p.add_argument("--samples", type=int, default=None,
                   help=f"videos per prompt, seeds seed..seed+samples-1 (default: 5 for {STANDARD} as VBench expects, "
                        f"1 for a prompt file)")
    p.add_argument("--max-prompts", type=int, default=None, help="use only the first N prompts")
    venv = p.add_mutually_exclusive_group()
    venv.add_argument("--vbench-venv", default=None, metavar="DIR", help="an existing VBench virtual environment")
    venv.add_argument("--setup-venv", default=None, metavar="DIR",
                      help="create (or complete) a VBench virtual environment at DIR, then use it")
    p.add_argument("--allow-downloads", action="store_true",
                   help="let VBench download missing model weights (default: skip those dimensions and say why)")
    p.add_argument("--fps", type=int, default=8)


def read_prompt_file(path: str) -> list[str]:
    """Prompts from a ``.json`` list or a text file with one prompt per line; checks they make valid file names."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--prompts {path!r}: no such file. Pass a text file with one prompt per line, a JSON "
                                f"list of prompts, or '{STANDARD}'.")
    from .prompts import read_prompt_file as read_prompts

    prompts = read_prompts(path)
    for p in prompts:
        if "/" in p or "\0" in p or len(p.encode()) > _MAX_NAME_BYTES:
            raise ValueError(f"Prompt {p[:60]!r} cannot be a VBench file name ('{{prompt}}-{{i}}.mp4'): it must not "
                             f"contain '/' and must be at most {_MAX_NAME_BYTES} bytes.")
    return list(dict.fromkeys(prompts))


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def run(args) -> int:
    from .compare import compare, save_video
    from ..config import AccelerationConfig
    from .loading import load_pipeline
    from ..quality import vbench_runner as vr

    # ----------------------------------------------------------------- every check before the (slow) generation
    dims = vr.validate_dimensions(args.dimensions)
    config = AccelerationConfig(speedup=args.speedup, schedule=args.schedule)
    if args.samples is not None and args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}.")
    if args.max_prompts is not None and args.max_prompts < 1:
        raise ValueError(f"--max-prompts must be >= 1, got {args.max_prompts}.")
    standard = args.prompts == STANDARD
    python = probe = None
    if args.setup_venv:
        python = vr.setup_venv(args.setup_venv)
    elif args.vbench_venv:
        python = vr.venv_python(args.vbench_venv)
    if python is not None:
        probe = vr.probe_venv(python)
    if standard:
        if probe is None:
            raise ValueError(f"--prompts {STANDARD} needs VBench's prompt list, which ships with VBench: pass "
                             f"--vbench-venv DIR, or --setup-venv DIR to create it.")
        prompts = vr.standard_prompts(probe["full_info"], dims)
        if not prompts:
            raise ValueError(f"VBench's standard suite has no prompt for dimensions {dims}.")
    else:
        prompts = read_prompt_file(args.prompts)
    total_prompts = len(prompts)
    prompts = prompts[: args.max_prompts] if args.max_prompts else prompts
    samples = args.samples or (5 if standard else 1)
    plans = vr.plan_dimensions(dims, vbench_available=probe is not None, standard_suite=standard,
                               torchvision_ok=bool(probe and probe["torchvision_ok"]),
                               torchvision_error=probe and probe["torchvision_error"],
                               allow_downloads=args.allow_downloads)

    # ----------------------------------------------------------------- generation
    from .generate import settings_from_args

    pipe = load_pipeline(args.model, getattr(torch, args.dtype), args.device)
    dense_dir, acc_dir = os.path.join(args.out, "dense"), os.path.join(args.out, "accelerated")
    os.makedirs(dense_dir, exist_ok=True)
    os.makedirs(acc_dir, exist_ok=True)
    videos: list[dict[str, Any]] = []
    n_total = len(prompts) * samples
    for pi, prompt in enumerate(prompts):
        for i in range(samples):
            settings = settings_from_args(argparse.Namespace(**{**vars(args), "prompt": prompt}), pipe)
            settings.seed = args.seed + i
            name = f"{prompt}-{i}.mp4"
            print(f"[vdit-accel vbench] {len(videos) + 1}/{n_total}: {name}")
            result = compare(pipe, settings, config, progress=False, max_runs=1)  # many videos: one run each
            save_video(result.dense.frames, os.path.join(dense_dir, name), args.fps)
            save_video(result.accelerated.frames, os.path.join(acc_dir, name), args.fps)
            m = result.metrics
            videos.append(dict(video=name, prompt=prompt, seed=settings.seed, dense_seconds=result.dense.seconds,
                               accelerated_seconds=result.accelerated.seconds, psnr=m["psnr"], ssim=m["ssim"],
                               lpips=m["lpips"]))
            lpips_reason = m.get("lpips_unavailable_reason")
    names = [v["video"] for v in videos]

    # ----------------------------------------------------------------- scoring
    vb_results: dict[str, dict[str, dict]] = {}
    to_vbench = [p.dimension for p in plans if p.run_with == "vbench"]
    if to_vbench:
        mode = "vbench_standard" if standard else "custom_input"
        for label, folder in (("dense", dense_dir), ("accelerated", acc_dir)):
            print(f"[vdit-accel vbench] VBench {', '.join(to_vbench)} on {label} videos")
            vb_results[label] = vr.run_vbench(python, folder, os.path.join(args.out, "vbench_raw", label), label,
                                              to_vbench, mode=mode, device=args.device,
                                              allow_downloads=args.allow_downloads)
    dimensions: dict[str, dict[str, Any]] = {}
    for plan in plans:
        d: dict[str, Any] = {"status": "skipped", "reason": plan.reason}
        if plan.run_with == "formula":
            dense_s = vr.offline_dimension_scores(dense_dir, names)
            acc_s = vr.offline_dimension_scores(acc_dir, names)
            d = dict(status="ran", source="vdit_accel.quality.temporal_flicker (VBench 0.1.5 formula) on the decoded "
                                          "mp4s; VBench not installed", dense=dense_s["score"],
                     accelerated=acc_s["score"], videos=dict(dense=dense_s["videos"], accelerated=acc_s["videos"]))
        elif plan.run_with == "vbench":
            rd, ra = vb_results["dense"][plan.dimension], vb_results["accelerated"][plan.dimension]
            if "score" in rd and "score" in ra:
                d = dict(status="ran", source=f"VBench {probe['vbench_version']}", dense=rd["score"],
                         accelerated=ra["score"], videos=dict(dense=rd["videos"], accelerated=ra["videos"]))
                if plan.dimension == "temporal_flickering":  # the same formula here, as a cross-check
                    d["vdit_accel_formula"] = dict(dense=vr.offline_dimension_scores(dense_dir, names)["score"],
                                                   accelerated=vr.offline_dimension_scores(acc_dir, names)["score"])
            else:
                bad = rd if "score" not in rd else ra
                d = dict(status="failed" if "error" in bad else "skipped",
                         reason=bad.get("error") or bad.get("skipped"))
        dimensions[plan.dimension] = d

    dense_t = sum(v["dense_seconds"] for v in videos)
    acc_t = sum(v["accelerated_seconds"] for v in videos)
    ran = [k for k, d in dimensions.items() if d["status"] == "ran"]
    report = dict(
        model=args.model, prompts_source=STANDARD if standard else os.path.abspath(args.prompts),
        num_prompts=len(prompts), num_prompts_available=total_prompts, samples=samples, seed=args.seed,
        device=args.device, dtype=args.dtype,
        acceleration_label=(f"speedup={args.speedup}" if args.speedup else
                            f"schedule={args.schedule}" if args.schedule else "default schedule"),
        vbench=dict(status=(f"VBench {probe['vbench_version']} in {os.path.dirname(os.path.dirname(python))}"
                            if probe else "not installed (offline path)"),
                    torchvision_ok=probe["torchvision_ok"] if probe else None),
        dimensions=dimensions, dimensions_ran=ran,
        dimensions_skipped={k: d["reason"] for k, d in dimensions.items() if d["status"] != "ran"},
        fidelity=dict(psnr=_mean([v["psnr"] for v in videos]), ssim=_mean([v["ssim"] for v in videos]),
                      lpips=_mean([v["lpips"] for v in videos]),
                      lpips_unavailable_reason=None if _mean([v["lpips"] for v in videos]) is not None
                      else lpips_reason),
        timing=dict(dense_seconds=dense_t, accelerated_seconds=acc_t, speedup=dense_t / acc_t,
                    kind="measured wall-clock, one run per video, same process"),
        videos=videos,
    )
    with open(os.path.join(args.out, "vbench_results.json"), "w") as f:
        json.dump(report, f, indent=2, default=float)
    table = vr.write_table(os.path.join(args.out, "vbench_table.md"), report)
    print(table)
    print(f"[vdit-accel vbench] ran {len(ran)} of {len(dims)} dimensions; wrote {args.out}/vbench_results.json, "
          f"{args.out}/vbench_table.md")
    return 0
