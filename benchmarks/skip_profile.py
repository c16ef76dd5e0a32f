"""What skipping one step costs, step by step: every step computed but one, whose output is the forecast, against
dense, on the bundled model through its pipeline. The evidence behind the schedules' dense warm-up and ``auto``'s
single skips in the first half (docs/schedules.md).

    python benchmarks/skip_profile.py                  # 20 steps, the development prompts -> results/skip_profile.md
    python benchmarks/skip_profile.py --steps 50 --out /tmp/skip50.md

For each step k from the third on (the forecast needs two computed steps), the plan computes every step but k
(``BudgetSchedule(budgets=...)`` with a 0 at k) and the decoded frames are compared with dense of the same seed. The
prompts are development prompts: the search's training prompts and three more, none a reporting prompt of
``compare_caches.py``. The mean over prompts is taken on the squared error (one bad prompt weighs as it should), then
written in dB. The table also lists the step's σ interval of the scheduler, so the profile can be read against it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import torch

from _report import write_report  # benchmarks/ is on sys.path when a script here runs

HERE = os.path.dirname(os.path.abspath(__file__))
DEV_PROMPTS = ["a green triangle moving right on a striped background",
               "a red square moving up on a checkered background",
               "a blue circle moving down on a gray background"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=os.path.join(HERE, "results", "skip_profile.md"))
    args = p.parse_args(argv)
    if args.steps < 4:
        p.error("--steps must be >= 4 (a skip needs two computed steps before it)")
    torch.set_num_threads(args.threads)

    from tqdm import tqdm

    from vdit_accel import AccelerationConfig, BudgetSchedule, disable_acceleration, enable_acceleration
    from vdit_accel.commands.compare import GenerationSettings, generate
    from vdit_accel.quality import compare_videos
    from vdit_accel.tiny_model import load_default_pipeline

    with open(os.path.join(HERE, "results", "search_train_prompts.json")) as f:
        prompts = DEV_PROMPTS + list(json.load(f))
    n = args.steps
    pipe = load_default_pipeline()
    settings = [GenerationSettings(prompt=q, seed=10 + i, num_inference_steps=n) for i, q in enumerate(prompts)]
    start = time.time()
    dense = [generate(pipe, s, progress=False).frames for s in settings]
    pipe.scheduler.set_timesteps(n)
    sigmas = [float(x) for x in pipe.scheduler.sigmas] if getattr(pipe.scheduler, "sigmas", None) is not None else None
    rows = []
    for k in tqdm(range(2, n), desc="skipped step"):
        budgets = [1.0] * n
        budgets[k] = 0.0
        enable_acceleration(pipe, AccelerationConfig(schedule=BudgetSchedule(budgets=budgets)))
        try:
            psnrs = [compare_videos(d, generate(pipe, s, progress=False).frames)["psnr"]
                     for d, s in zip(dense, settings)]
        finally:
            disable_acceleration(pipe)
        mse = sum(10 ** (-x / 10) for x in psnrs) / len(psnrs)
        rows.append((k, -10 * math.log10(mse), min(psnrs), psnrs))

    lines = [
        "# What skipping one step costs (bundled model)", "",
        f"Command: `python benchmarks/skip_profile.py --steps {n}` — "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.time() - start:.0f} s.  ",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}.  ",
        f"{len(prompts)} development prompts (seeds 10-{9 + len(prompts)}), {n} steps, the bundled model's generation "
        f"settings. Every step computed but the one named; PSNR of the decoded frames against dense (mean over the "
        f"prompts taken on the squared error). Lower = the skip costs more.", "",
        "| skipped step | σ interval | PSNR, mean | PSNR, worst prompt | per prompt |", "|---|---|---|---|---|",
    ]
    for k, mean_db, worst, psnrs in rows:
        interval = f"{sigmas[k] - sigmas[k + 1]:.3f}" if sigmas is not None and k + 1 < len(sigmas) else "—"
        lines.append(f"| {k} | {interval} | {mean_db:.1f} dB | {worst:.1f} dB | "
                     f"{', '.join(f'{x:.1f}' for x in psnrs)} |")
    write_report("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
