"""Statistics of score reuse: per (step, CFG context, layer) counts of the last run, folded into a summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...runtime import AccelRuntime

EMULATION_NOTE = ("emulated: reused Q/K entries are substituted and dense attention runs; the saved fraction is what a "
                  "reuse kernel could skip, no time is saved")
KERNEL_NOTE = ("kernel path (vdit_accel.kernels.channel_reuse_attention, query side only): the saved fraction is what "
               "the Triton kernel skips; on CPU and other backends reused entries are substituted and dense attention "
               "runs, so no time is saved there")


@dataclass
class ReuseStats:
    """Per (step, CFG context, layer) counts of one run (reset when a new pipeline call starts)."""

    group_names: tuple[str, ...]
    mode: str = "emulate"
    records: list[dict] = field(default_factory=list)
    run_marker: Any = None

    def sync_run(self, runtime: AccelRuntime) -> None:
        marker = runtime.records[0] if runtime.records else None
        if marker is not self.run_marker:
            self.records.clear()
            self.run_marker = marker

    def add(self, runtime: AccelRuntime, block: str, theta: float, products: list[float], saved: list[float],
            q_entries: int, q_reused: int, k_entries: int, k_reused: int) -> None:
        self.sync_run(runtime)
        self.records.append(dict(step=runtime.step, context=runtime.context, block=block, theta=theta,
                                 products=products, saved=saved, q_entries=q_entries, q_reused=q_reused,
                                 k_entries=k_entries, k_reused=k_reused))

    @staticmethod
    def _fold(recs: list[dict], names) -> dict[str, Any]:
        prod = [sum(r["products"][g] for r in recs) for g in range(len(names))]
        saved = [sum(r["saved"][g] for r in recs) for g in range(len(names))]
        qe, qr = sum(r["q_entries"] for r in recs), sum(r["q_reused"] for r in recs)
        ke, kr = sum(r["k_entries"] for r in recs), sum(r["k_reused"] for r in recs)
        return dict(saved_fraction=sum(saved) / max(sum(prod), 1), entry_fraction=(qr + kr) / max(qe + ke, 1),
                    q_fraction=qr / max(qe, 1), k_fraction=kr / max(ke, 1), products=sum(prod),
                    products_saved=sum(saved),
                    groups={n: s / max(p, 1) for n, s, p in zip(names, saved, prod)})

    def summary(self) -> dict[str, Any]:
        """``steps`` (per step, summed over layers and CFG branches), ``layers`` (per layer over the run),
        ``step_layer`` (saved fraction ``[step][layer]``), and run totals; all labelled as emulation."""
        names = self.group_names
        steps = sorted({r["step"] for r in self.records})
        blocks = list(dict.fromkeys(r["block"] for r in self.records))
        per_step = []
        for s in steps:
            recs = [r for r in self.records if r["step"] == s]
            per_step.append(dict(step=s, theta=recs[0]["theta"], **self._fold(recs, names)))
        per_layer = [dict(layer=bl, **self._fold([r for r in self.records if r["block"] == bl], names))
                     for bl in blocks]
        step_layer = [[self._fold([r for r in self.records if r["step"] == s and r["block"] == bl], names)
                       ["saved_fraction"] for bl in blocks] for s in steps]
        reuse_recs = [r for r in self.records if r["theta"] > 0]
        total = self._fold(self.records, names)
        note = EMULATION_NOTE if self.mode == "emulate" else KERNEL_NOTE
        return dict(mode=self.mode, note=note, definition="1 - computed QK^T partial products / dense partial "
                    "products (per channel: rows not reused x columns not reused)", group_names=list(names),
                    saved_fraction=total["saved_fraction"], entry_fraction=total["entry_fraction"],
                    groups=total["groups"],
                    saved_fraction_reuse_steps=self._fold(reuse_recs, names)["saved_fraction"] if reuse_recs else 0.0,
                    steps=per_step, layers=per_layer, layer_names=blocks, step_layer=step_layer)
