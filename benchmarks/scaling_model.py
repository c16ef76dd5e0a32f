"""Scaling model of sequence parallelism with token selection for 1–8 GPUs (Wan 2.1 at 480p × 81 frames).

Per denoising step (one CFG branch), for p ranks and a token budget θ:

* compute per rank = FLOPs(θ) / p / sustained throughput, plus the work every rank repeats (text K/V of
  cross-attention, the outside-the-blocks layers on the replicated text). FLOPs come from ``vdit_accel.cost``
  (the same model the schedules use). Under context parallelism every rank computes 1/p of the query rows (ring) or
  1/p of the heads over all rows (Ulysses), so the block work divides by p; token selection keeps
  ``ceil(θ·N/p)`` rows per rank, so it divides the same way on every rank.
* communication per rank, from the sizes diffusers' templates exchange (``TemplatedUlyssesAttention``,
  ``TemplatedRingAttention``, ``_templated_unified_attention``):
    - Ulysses (degree u): all-to-all of q (θ·N/p rows), k, v (N/p rows each), out (θ·N/p rows) and the LSE; each
      sends (u−1)/u of its tensor: ``(u−1)/u · (2θ + 2) · N/p · H·D · bytes`` (+ LSE, 4 bytes per row and head).
    - ring (degree r): all-gather of K/V: each rank receives ``(r−1) · 2 · N_r · H·D · bytes`` with ``N_r`` the
      K/V rows it holds (N/p, or N/r after the Ulysses step in the unified scheme, over H/u heads); diffusers
      all-gathers before the loop, so there is no compute/communication overlap in the model either.
    - once per step: the output all-gather (N·C_out) and nothing for the input split (it is a local slice).
  time = bytes / link bandwidth + collectives × latency.
* speedup = time(1 rank, dense) / time(p ranks, θ).

Measured vs modelled: this machine has no GPU and 2 shared CPU cores, so *no multi-device figure is measured* and
the GPU columns are modelled from the FLOP count at an assumed sustained throughput. The single-device figure that is
measured here is a CPU one (one Wan-1.3B-shaped block, dense and θ = 0.5): it is reported as measured and used only
for the CPU rows (ranks on separate CPU sockets over a 10 GB/s network, also modelled).

    python benchmarks/scaling_model.py            # writes benchmarks/results/scaling_model.{json,md}
    python benchmarks/scaling_model.py --no-measure   # skip the CPU calibration (modelled rows only)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

RESULTS = os.path.join(os.path.dirname(__file__), "results")

# ---------------------------------------------------------------------------------------------------- assumptions
ASSUMPTIONS = {
    "gpu": "NVIDIA H100 SXM 80GB in one HGX node (NVLink 4 + NVSwitch)",
    "gpu_sustained_tflops_bf16": 400.0,  # ~40 % of the 989 TFLOP/s dense bf16 peak: typical for DiT blocks
    "nvlink_alltoall_GBps_per_gpu": 350.0,  # nccl-tests all-to-all bus bandwidth on 8×H100 HGX, per direction
    "nvlink_allgather_GBps_per_gpu": 370.0,
    "collective_latency_us": 25.0,  # per NCCL collective, small-message floor
    "bytes_per_element": 2,  # bf16
    "cpu_network_GBps": 10.0,  # CPU rows: ranks on separate hosts over 100 GbE-class links (modelled)
    "cpu_collective_latency_us": 100.0,
    "text_tokens": 512,
    "resolution": "480×832, 81 frames -> latent 21×60×104 -> post-patch grid 21×30×52 = 32,760 video tokens",
}

MODELS = {
    # name: (heads, head_dim, ffn_dim, layers, text_dim)
    "Wan2.1-T2V-1.3B": (12, 128, 8960, 30, 4096),
    "Wan2.1-T2V-14B": (40, 128, 13824, 40, 4096),
}
N_VIDEO = 21 * 30 * 52
WORLD_SIZES = (1, 2, 4, 8)
BUDGETS = (1.0, 0.5, 0.3)


class _Cfg:
    """The config attributes the Wan adapter's FLOP model (``vdit_accel.adapters.wan.ADAPTER.flops``) reads."""

    def __init__(self, heads, head_dim, ffn, layers, text_dim):
        self.num_attention_heads, self.attention_head_dim, self.ffn_dim = heads, head_dim, ffn
        self.num_layers, self.text_dim = layers, text_dim


def layouts(p: int, heads: int) -> list[tuple[str, int, int]]:
    """(label, ulysses, ring) layouts valid for p ranks and ``heads`` heads (Ulysses needs heads % u == 0)."""
    if p == 1:
        return [("single", 1, 1)]
    out = []
    if heads % p == 0:
        out.append((f"ulysses={p}", p, 1))
    out.append((f"ring={p}", 1, p))
    for u in range(p // 2, 1, -1):
        if p % u == 0 and heads % u == 0 and p // u > 1:
            out.append((f"ulysses={u},ring={p // u}", u, p // u))
            break
    return out


def step_time(model: str, p: int, u: int, r: int, budget: float, device: str, throughput_flops: float) -> dict:
    from vdit_accel.adapters.wan import ADAPTER

    heads, hd, ffn, layers, text_dim = MODELS[model]
    cfg = _Cfg(heads, hd, ffn, layers, text_dim)
    c = heads * hd
    t = ASSUMPTIONS["text_tokens"]
    n = N_VIDEO
    b = ASSUMPTIONS["bytes_per_element"]
    blk = ADAPTER.flops(cfg, n, t)  # a config of real model widths, no weights
    # the text K/V of cross-attention (2·2·c²·t, inside blk.dense) is repeated on every rank; the rest divides by p
    text_kv = 2 * (2 * c * c * t)
    per_rank_block = (blk.at(budget) - text_kv) / p + text_kv
    outside = 2 * t * (text_dim * c + c * c) + 2 * (n / p) * (2 * 16 * 4 * c)  # text embedder (replicated), patch io
    flops = layers * per_rank_block + outside
    compute_s = flops / throughput_flops

    if device == "gpu":
        a2a_bw = ASSUMPTIONS["nvlink_alltoall_GBps_per_gpu"] * 1e9
        ag_bw = ASSUMPTIONS["nvlink_allgather_GBps_per_gpu"] * 1e9
        lat = ASSUMPTIONS["collective_latency_us"] * 1e-6
    else:
        a2a_bw = ag_bw = ASSUMPTIONS["cpu_network_GBps"] * 1e9
        lat = ASSUMPTIONS["cpu_collective_latency_us"] * 1e-6
    rows = n / p
    comm_bytes = 0.0
    comm_s = 0.0
    collectives = 0
    if u > 1:  # q, k, v, out, lse all-to-alls
        frac = (u - 1) / u
        elem = (2 * budget + 2) * rows * c
        lse = budget * rows * heads * 4 / b
        comm_bytes += frac * (elem + lse) * b
        comm_s += frac * (elem + lse) * b / a2a_bw
        collectives += 5
    if r > 1:  # all-gather of K/V over the ring group (after the Ulysses exchange in the unified scheme)
        kv_rows = rows * u  # rows per rank after Ulysses (all of the ulysses group's rows, H/u heads)
        kv_bytes = (r - 1) * 2 * kv_rows * (c / u) * b
        comm_bytes += kv_bytes
        comm_s += kv_bytes / ag_bw
        collectives += 1
    comm_bytes *= layers
    comm_s = comm_s * layers + collectives * layers * lat
    if p > 1:  # output all-gather once per step
        out_bytes = (p - 1) / p * n * 64 * 4  # proj_out: 16 ch × 2×2 patch, fp32 after the model
        comm_bytes += out_bytes
        comm_s += out_bytes / ag_bw + lat
    return dict(model=model, device=device, ranks=p, layout="single" if p == 1 else None, budget=budget,
                compute_ms=compute_s * 1e3, comm_ms=comm_s * 1e3, comm_MB_per_rank=comm_bytes / 1e6,
                step_ms=(compute_s + comm_s) * 1e3)


def measure_cpu(tokens_hw: tuple[int, int, int] = (5, 16, 16), repeats: int = 3) -> dict:
    """Measured on this machine: one Wan-1.3B-shaped block (real widths, 1 layer), dense vs θ = 0.5."""
    from diffusers import WanTransformer3DModel as Wan

    from vdit_accel.api import accelerate_transformer, set_step
    from vdit_accel.config import AccelerationConfig
    from vdit_accel.cost import block_flops
    from vdit_accel.schedule import BudgetSchedule

    torch.manual_seed(0)
    model = Wan(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=1, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6).eval()
    f, h, w = tokens_hw
    g = torch.Generator().manual_seed(0)
    kw = dict(hidden_states=torch.randn(1, 16, f, 2 * h, 2 * w, generator=g),
              encoder_hidden_states=torch.randn(1, 64, 4096, generator=g), timestep=torch.tensor([500.0]),
              return_dict=False)

    def timed():
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(**kw)
        return time.perf_counter() - t0

    timed()
    dense = statistics.median(timed() for _ in range(repeats))
    cfg = AccelerationConfig(schedule=[1.0, 0.5])
    accelerate_transformer(model, cfg, BudgetSchedule(budgets=[1.0, 0.5]))
    set_step(model, 0, 2)
    timed()  # dense first step fills the caches
    set_step(model, 1, 2)
    accel = []
    for _ in range(repeats):
        set_step(model, 0, 2)
        timed()
        set_step(model, 1, 2)
        accel.append(timed())
    n = f * h * w
    flops = block_flops(model, n, 64).at(1.0)
    return dict(kind="measured", what=f"one Wan2.1-1.3B-shaped block, {n} video + 64 text tokens, fp32, "
                                      f"{torch.get_num_threads()} thread(s)",
                dense_s=dense, budget_0_5_s=statistics.median(accel), measured_speedup=dense / statistics.median(accel),
                achieved_gflops=flops / dense / 1e9, cpu=platform.processor() or platform.machine())


def build_table(cpu: dict | None) -> list[dict]:
    rows = []
    gpu_tp = ASSUMPTIONS["gpu_sustained_tflops_bf16"] * 1e12
    for model, (heads, *_rest) in MODELS.items():
        base = step_time(model, 1, 1, 1, 1.0, "gpu", gpu_tp)["step_ms"]
        for p in WORLD_SIZES:
            for label, u, r in layouts(p, heads):
                for budget in BUDGETS:
                    row = step_time(model, p, u, r, budget, "gpu", gpu_tp)
                    same_budget_1 = step_time(model, 1, 1, 1, budget, "gpu", gpu_tp)["step_ms"]
                    row.update(layout=label, kind="modelled", speedup_vs_1gpu_dense=base / row["step_ms"],
                               parallel_efficiency=same_budget_1 / row["step_ms"] / p)
                    rows.append(row)
    if cpu is not None:
        cpu_tp = cpu["achieved_gflops"] * 1e9
        model = "Wan2.1-T2V-1.3B"
        base = step_time(model, 1, 1, 1, 1.0, "cpu", cpu_tp)["step_ms"]
        for p in WORLD_SIZES:
            for label, u, r in layouts(p, 12)[:1]:
                for budget in (1.0, 0.5):
                    row = step_time(model, p, u, r, budget, "cpu", cpu_tp)
                    same_budget_1 = step_time(model, 1, 1, 1, budget, "cpu", cpu_tp)["step_ms"]
                    row.update(layout=label, kind="modelled from the measured CPU throughput",
                               speedup_vs_1gpu_dense=base / row["step_ms"],
                               parallel_efficiency=same_budget_1 / row["step_ms"] / p)
                    rows.append(row)
    return rows


def write(rows: list[dict], cpu: dict | None) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    payload = dict(assumptions=ASSUMPTIONS, video_tokens=N_VIDEO, cpu_calibration=cpu, rows=rows,
                   measured_multi_device=None,
                   note="No multi-device measurement: this machine has no GPU and 2 shared CPU cores. GPU rows are "
                        "modelled (FLOPs at an assumed sustained throughput + all-to-all / all-gather volumes at an "
                        "assumed link bandwidth). The 2-rank gloo tests check correctness, not speed.",
                   torch=torch.__version__)
    with open(os.path.join(RESULTS, "scaling_model.json"), "w") as f:
        json.dump(payload, f, indent=2)
    lines = ["# Sequence-parallel scaling model (Wan 2.1, 480p × 81 frames, one CFG branch per step)", "",
             "**Modelled, not measured**: no GPU and no second device on this machine. "
             "Compute per rank = FLOPs(θ)/p at "
             f"an assumed {ASSUMPTIONS['gpu_sustained_tflops_bf16']:.0f} TFLOP/s sustained bf16 per H100; "
             f"communication = the all-to-all / all-gather sizes of diffusers' Ulysses / ring templates at "
             f"{ASSUMPTIONS['nvlink_alltoall_GBps_per_gpu']:.0f} GB/s (all-to-all) and "
             f"{ASSUMPTIONS['nvlink_allgather_GBps_per_gpu']:.0f} GB/s (all-gather) per GPU over NVLink/NVSwitch, "
             f"{ASSUMPTIONS['collective_latency_us']:.0f} µs per collective, no overlap. "
             f"{N_VIDEO} video + {ASSUMPTIONS['text_tokens']} text tokens. Ulysses needs heads % degree == 0 "
             "(1.3B has 12 heads: no ulysses=8, unified instead).", "",
             "| model | ranks | layout | θ | compute ms | comm ms | comm MB/rank | step ms | speedup vs 1 GPU dense "
             "| parallel efficiency |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["device"] != "gpu":
            continue
        lines.append(f"| {r['model']} | {r['ranks']} | {r['layout']} | {r['budget']:.1f} | {r['compute_ms']:.0f} | "
                     f"{r['comm_ms']:.1f} | {r['comm_MB_per_rank']:.0f} | {r['step_ms']:.0f} | "
                     f"{r['speedup_vs_1gpu_dense']:.2f}× | {r['parallel_efficiency']:.0%} |")
    if cpu is not None:
        lines += ["", "## CPU calibration (measured on this machine)", "",
                  f"{cpu['what']}: dense {cpu['dense_s']:.3f} s, θ = 0.5 {cpu['budget_0_5_s']:.3f} s "
                  f"(measured speedup {cpu['measured_speedup']:.2f}×), {cpu['achieved_gflops']:.1f} GFLOP/s achieved "
                  f"dense. CPU processor: {cpu['cpu']}.", "",
                  "CPU ranks on separate hosts (modelled from that throughput, "
                  f"{ASSUMPTIONS['cpu_network_GBps']:.0f} GB/s network):", "",
                  "| ranks | layout | θ | compute s | comm s | step s | speedup vs 1 rank dense | efficiency |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["device"] != "cpu":
                continue
            lines.append(f"| {r['ranks']} | {r['layout']} | {r['budget']:.1f} | {r['compute_ms'] / 1e3:.1f} | "
                         f"{r['comm_ms'] / 1e3:.2f} | {r['step_ms'] / 1e3:.1f} | {r['speedup_vs_1gpu_dense']:.2f}× | "
                         f"{r['parallel_efficiency']:.0%} |")
    lines += ["", "Reading the table: communication per rank falls as 1/p with the shard, but compute falls as 1/p "
              "too, "
              "so the comm share stays roughly constant for Ulysses and grows with ring (K/V all-gather grows with "
              "(r−1)/r · N). Token selection shrinks compute and the q/out all-to-alls with θ but not the K/V "
              "exchange (all keys are needed), so at low θ the relative communication share grows and parallel "
              "efficiency drops a little.", "",
              "Assumptions: " + "; ".join(f"{k} = {v}" for k, v in ASSUMPTIONS.items()) + ".", "",
              "Regenerate: `python benchmarks/scaling_model.py`."]
    with open(os.path.join(RESULTS, "scaling_model.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-measure", action="store_true", help="skip the CPU calibration")
    args = ap.parse_args(argv)
    cpu = None if args.no_measure else measure_cpu()
    rows = build_table(cpu)
    write(rows, cpu)
    print(open(os.path.join(RESULTS, "scaling_model.md")).read())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
