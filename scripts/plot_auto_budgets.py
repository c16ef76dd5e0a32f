"""Plot the budgets ``schedule="auto"`` chooses per step on the bundled model (docs/auto_budgets.png).

    python scripts/plot_auto_budgets.py            # 20 and 50 steps, the caches benchmark's reporting prompts

Each row is one run (prompt, step count); a filled cell is a computed step, an empty one a skipped (forecast) step.
"""

from __future__ import annotations

import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import vdit_accel  # noqa: E402
from vdit_accel import BudgetSchedule  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "benchmarks"))
from compare_caches import REPORT_PROMPTS  # noqa: E402


def main() -> int:
    torch.set_num_threads(1)
    pipe = vdit_accel.load_default_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_acceleration(schedule=BudgetSchedule.auto())
    fig, axes = plt.subplots(2, 1, figsize=(10, 3.2), constrained_layout=True)
    for ax, steps in zip(axes, (20, 50)):
        rows = []
        for i, prompt in enumerate(REPORT_PROMPTS[:3]):
            with torch.inference_mode():
                pipe(prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(i), output_type="pt")
            rows.append(vdit_accel.summary(pipe)["budgets"])
        ax.imshow(rows, cmap="Greens", vmin=0, vmax=1.2, aspect="auto", interpolation="nearest")
        computed = sum(sum(r) for r in rows) / (len(rows) * steps)
        ax.set_title(f"{steps} steps: {computed:.0%} of steps computed (green), the rest forecast", fontsize=9)
        ax.set_yticks(range(len(rows)), [p[:28] for p in REPORT_PROMPTS[:3]], fontsize=7)
        ax.set_xlabel("denoising step", fontsize=8)
    out = os.path.join(HERE, "..", "docs", "auto_budgets.png")
    tolerance = BudgetSchedule.auto().run_time["tolerance"]
    fig.suptitle(f'schedule="auto" (default tolerance {tolerance}) on the bundled model', fontsize=10)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
