"""What tokens that are not recomputed take (``TokenSelectionConfig.cache``): PSNR/SSIM against dense, same seeds.

Modes: ``output`` (stale raw output), ``residual`` (current input + stale residual), ``forecast`` (per-token Taylor
forecast along the timestep axis, horizons 1 and 0.5), and ``forecast`` with a bfloat16 cache.

    python benchmarks/cache_mode_compare.py            # bundled model, 4 held-out prompts × budgets 0.7/0.5/0.4
    python benchmarks/cache_mode_compare.py --model tiny-wan --prompts 1

Writes benchmarks/results/cache_modes.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

import vdit_accel
from vdit_accel import AccelerationConfig, BudgetSchedule, TokenSelectionConfig
from vdit_accel.commands.compare import GenerationSettings, generate
from vdit_accel.commands.loading import load_pipeline
from vdit_accel.quality import compare_videos

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="default")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.7, 0.5, 0.4])
    p.add_argument("--out", default=os.path.join(RESULTS, "cache_modes"))
    args = p.parse_args()
    torch.set_num_threads(2)
    pipe = load_pipeline(args.model)
    if args.model == "default":
        from vdit_accel.tiny_model import DEFAULT_GENERATION_KWARGS as base

        with open(os.path.join(RESULTS, "search_holdout_prompts.json")) as f:  # never used to tune anything
            prompts = json.load(f)
    else:
        base = dict(height=64, width=64, num_frames=17, num_inference_steps=10, guidance_scale=6.0,
                    max_sequence_length=16)
        prompts = ["a dog dancing on the beach", "a red car in the city at night", "a cat running", "a blue sky"]
    prompts = list(prompts)[: args.prompts]
    steps = base["num_inference_steps"]
    rows = []
    settings = [GenerationSettings(prompt=pr, seed=i, **base) for i, pr in enumerate(prompts)]
    dense = [generate(pipe, s, progress=False).frames for s in settings]
    variants = [("output", {}), ("residual", {}), ("forecast", dict(forecast_horizon=1.0)),
                ("forecast", dict(forecast_horizon=0.5)), ("forecast", dict(forecast_horizon=0.5, cache_dtype="bfloat16"))]
    for budget in args.budgets:
        for mode, extra in variants:
            cfg = AccelerationConfig(schedule=BudgetSchedule(budget=budget).resolve(steps),
                                     token_selection=TokenSelectionConfig(cache=mode, **extra))
            psnrs, ssims = [], []
            for s, ref in zip(settings, dense):
                vdit_accel.enable_acceleration(pipe, cfg)
                out = generate(pipe, s, progress=False).frames
                vdit_accel.disable_acceleration(pipe)
                m = compare_videos(ref, out)
                psnrs.append(m["psnr"])
                ssims.append(m["ssim"])
            label = mode + "".join(f", {k}={v}" for k, v in extra.items())
            row = dict(budget=budget, cache=label, psnr=statistics.mean(psnrs), ssim=statistics.mean(ssims),
                       psnr_per_prompt=psnrs)
            rows.append(row)
            print(f"θ={budget} cache={label:45s} PSNR {row['psnr']:.2f} dB  SSIM {row['ssim']:.4f}", flush=True)
    result = dict(model=args.model, steps=steps, prompts=prompts, schedule="dense first 20% + last step",
                  command=" ".join(["python", *sys.argv]), rows=rows)
    os.makedirs(RESULTS, exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    lines = [f"# Cache modes ({args.model}, {steps} steps, {len(prompts)} prompts)", "",
             f"Command: `{result['command']}`. PSNR/SSIM of the accelerated video against dense, same seed, mean "
             f"over prompts.", "", "| θ | cache | PSNR dB | SSIM |", "|---|---|---|---|"]
    lines += [f"| {r['budget']} | {r['cache']} | {r['psnr']:.2f} | {r['ssim']:.4f} |" for r in rows]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
