"""What the accelerated code path costs when it computes everything: budget 1.0 at every step against plain dense,
on the bundled model through its pipeline (issue target: <= 1.03x dense).

    python benchmarks/overhead_bundled.py                 # 20 steps, 15 paired runs -> results/overhead_bundled.md
    python benchmarks/overhead_bundled.py --reps 5 --out /tmp/x.md

Each repetition runs dense, then budget 1.0 (``BudgetSchedule(budgets=[1.0] * steps)``: every step computed, the
step-forecast history kept, as any plan with skipped steps does), on the same prompt and seed; the order alternates
between repetitions. Reported: the median of the per-pair ratios and the ratio of the fastest runs, for transformer
wall-clock and process CPU time (``vdit_accel.commands.compare.generate``'s clock). A skipped step's cost is measured
the same way: a plan of computed and skipped steps (named in the table) against budget 1.0 prorated to its computed
steps.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

from _report import write_report  # benchmarks/ is on sys.path when a script here runs

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(HERE, "results", "overhead_bundled.md"))
    args = p.parse_args(argv)
    if args.steps < 2 or args.reps < 1:
        p.error("--steps must be >= 2 and --reps >= 1")
    torch.set_num_threads(args.threads)

    from tqdm import tqdm

    from vdit_accel import AccelerationConfig, BudgetSchedule, disable_acceleration, enable_acceleration
    from vdit_accel.commands.compare import GenerationSettings, generate
    from vdit_accel.schedule import dense_warmup_steps
    from vdit_accel.tiny_model import DEFAULT_GENERATION_KWARGS, load_default_pipeline

    pipe = load_default_pipeline()
    kw = dict(DEFAULT_GENERATION_KWARGS)
    kw.pop("num_inference_steps", None)
    settings = GenerationSettings(prompt="a green circle moving left on a black background", seed=7,
                                  num_inference_steps=args.steps, **kw)
    n = args.steps
    warm = dense_warmup_steps(n)  # the rule's dense warm-up, then every other step computed, the last one skipped
    pattern = "".join("D" if i < warm or ((i - warm) % 2 == 1 and i < n - 1) else "." for i in range(n))
    plans = {"budget 1.0": [1.0] * n, f"plan {pattern}": [1.0 if c == "D" else 0.0 for c in pattern]}
    load0 = os.getloadavg()
    generate(pipe, settings, progress=False)  # warm-up
    times: dict[str, list[tuple[float, float]]] = {"dense": [], **{k: [] for k in plans}}
    start = time.time()
    for rep in tqdm(range(args.reps), desc="paired runs"):
        order = ["dense", *plans] if rep % 2 == 0 else [*plans, "dense"]
        for name in order:
            if name != "dense":
                enable_acceleration(pipe, AccelerationConfig(schedule=BudgetSchedule(budgets=plans[name])))
            try:
                g = generate(pipe, settings, progress=False)
            finally:
                if name != "dense":
                    disable_acceleration(pipe)
            times[name].append((g.transformer_seconds, g.transformer_cpu_seconds))
    load1 = os.getloadavg()

    def ratios(name: str, k: int) -> tuple[float, float]:
        paired = [b[k] / a[k] for a, b in zip(times["dense"], times[name])]
        return statistics.median(paired), min(b[k] for b in times[name]) / min(a[k] for a in times["dense"])

    computed = pattern.count("D")
    lines = [
        "# Overhead of the accelerated code path on the bundled model", "",
        f"Command: `python benchmarks/overhead_bundled.py --steps {n} --reps {args.reps}` — "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.time() - start:.0f} s.  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} torch thread(s); load average before {[round(x, 2) for x in load0]}, after "
        f"{[round(x, 2) for x in load1]}.  ",
        f"Prompt {settings.prompt!r}, seed {settings.seed}, {n} steps, the bundled model's generation settings; "
        f"{args.reps} repetitions, dense and the plans alternating in order.", "",
        "| run | transformer wall (median) | CPU (median) | wall / dense, median of pairs | CPU / dense, median of "
        "pairs | CPU / dense, fastest runs |", "|---|---|---|---|---|---|",
    ]
    for name in times:
        wall = statistics.median(t[0] for t in times[name])
        cpu = statistics.median(t[1] for t in times[name])
        if name == "dense":
            lines.append(f"| dense | {wall * 1000:.1f} ms | {cpu * 1000:.1f} ms | 1 | 1 | 1 |")
            continue
        w_med, _ = ratios(name, 0)
        c_med, c_min = ratios(name, 1)
        lines.append(f"| {name} | {wall * 1000:.1f} ms | {cpu * 1000:.1f} ms | {w_med:.3f}× | {c_med:.3f}× | "
                     f"{c_min:.3f}× |")
    full = statistics.median(t[1] for t in times["budget 1.0"])
    plan = statistics.median(t[1] for t in times[f"plan {pattern}"])
    skip = (plan - full * computed / n) / (n - computed) / (full / n)
    lines += ["", f"Target: budget 1.0 ≤ 1.03× dense. A skipped step of the plan costs {skip * 100:.1f} % of a "
              f"budget-1.0 step (CPU medians: plan − {computed}/{n} of budget 1.0, per skipped step; negative = "
              f"within noise).", ""]
    write_report("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
