"""Plots and text for score-reuse (TimeRipple, emulated) statistics: saved fraction per step and per layer.

Input is :func:`vdit_accel.methods.score_reuse.reuse_summary`'s dict. matplotlib (Agg backend) is imported only
inside :func:`plot_reuse`.

>>> from vdit_accel.methods.score_reuse import reuse_summary
>>> from vdit_accel.commands.reports import plot_reuse
>>> plot_reuse(reuse_summary(pipe), "reuse.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any


def format_reuse(summary: dict[str, Any]) -> str:
    """One line per step: θ and the saved fraction of QKᵀ partial products (emulation)."""
    lines = [f"score reuse ({summary['note']})",
             f"saved fraction of QK^T partial products: {summary['saved_fraction']:.1%} over the run, "
             f"{summary['saved_fraction_reuse_steps']:.1%} on reuse steps; per RoPE group: "
             + ", ".join(f"{k} {v:.1%}" for k, v in summary["groups"].items())]
    for s in summary["steps"]:
        lines.append(f"  step {s['step']:3d}  theta {s['theta']:.3f}  saved {s['saved_fraction']:6.1%}  "
                     f"(Q entries {s['q_fraction']:5.1%}, K entries {s['k_fraction']:5.1%})")
    return "\n".join(lines)


def plot_reuse(summary: dict[str, Any], path: str | os.PathLike, title: str | None = None) -> str:
    """Save a PNG: saved fraction per step (with θ on a second axis) and a step × layer heat map. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s["step"] for s in summary["steps"]]
    fig, (ax, hm) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw=dict(width_ratios=(3, 2)))
    ax.plot(steps, [s["saved_fraction"] for s in summary["steps"]], "o-", label="QKᵀ partial products saved")
    ax.plot(steps, [s["entry_fraction"] for s in summary["steps"]], "s--", label="Q/K entries reused", alpha=0.7)
    for g in summary["group_names"]:
        if len(summary["group_names"]) > 1:
            ax.plot(steps, [s["groups"][g] for s in summary["steps"]], ":", label=f"products saved, group {g}")
    ax.set_xlabel("denoising step")
    ax.set_ylabel("fraction (emulated)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    th = ax.twinx()
    th.step(steps, [s["theta"] for s in summary["steps"]], where="mid", color="gray", alpha=0.5, label="θ")
    th.set_ylabel("θ (threshold)")
    ax.legend(loc="upper left", fontsize=7)
    ax.set_title(title or f"score reuse (emulation): {summary['saved_fraction']:.1%} of QKᵀ saved")
    im = hm.imshow([list(r) for r in zip(*summary["step_layer"])] if summary["step_layer"] else [[0]],
                   aspect="auto", vmin=0, vmax=1, cmap="viridis", origin="lower")
    hm.set_xticks(range(len(steps)), [str(s) for s in steps])
    names = summary.get("layer_names", [])
    hm.set_yticks(range(len(names)), names if len(names) <= 16 else [str(i) for i in range(len(names))], fontsize=7)
    hm.set_xlabel("denoising step")
    hm.set_ylabel("layer")
    hm.set_title("saved fraction per step and layer", fontsize=9)
    fig.colorbar(im, ax=hm)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


__all__ = ["format_reuse", "plot_reuse"]
