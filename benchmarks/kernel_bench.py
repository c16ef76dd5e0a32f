"""GPU benchmark of the attention kernels at Wan2.1-1.3B shapes (B=1, 12 heads x 128, 32,760 tokens, bf16).

Query-sparse attention at budgets θ: the Triton kernel (rows gathered in-kernel) against full-sequence SDPA
(default dispatch, and FlashAttention forced), against SDPA on the gathered ⌈θN⌉ queries (gather included: what the
``sdpa`` backend does), and xformers where installed. Efficiency = (t_full · θ) / t_kernel, i.e. the measured
speedup over the ideal 1/θ; the target is >= 0.9. Channel-block reuse: the kernel at a few thresholds on queries
with video-like structure, against dense SDPA and against itself at θ = 0, with the saved fraction of partial
products. Each kernel's output is also checked against a PyTorch path on the GPU.

Timing: CUDA events, warm-up calls first (they include Triton's autotuning), then the median of ``--repeats``.

    python benchmarks/kernel_bench.py                    # needs CUDA; writes benchmarks/results/kernels_<gpu>.{json,md}
    python benchmarks/kernel_bench.py --cpu-smoke        # tiny shapes on CPU via the reference path (no GPU numbers)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# ------------------------------------------------------------------------------------------------- timing


def timer(device: torch.device, warmup: int, repeats: int):
    def run(fn) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    return run


def machine(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, sm=f"{p.major}.{p.minor}", gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    return info


# --------------------------------------------------------------------------------------------- workloads


def video_queries(B, grid, H, D, dtype, device, seed=0):
    """q with video-like structure: per-channel content plus token noise whose amplitude rises across channel
    blocks of 16 (some blocks nearly static along time, others changing), and random k, v."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    S = grid[0] * grid[1] * grid[2]
    amp = torch.logspace(-2, 0, math.ceil(D / 16)).repeat_interleave(16)[:D]
    spatial = torch.randn(B, 1, grid[1] * grid[2], H, D, generator=g)
    q = spatial + amp * torch.randn(B, grid[0], grid[1] * grid[2], H, D, generator=g)
    k, v = (torch.randn(B, S, H, D, generator=g) for _ in range(2))
    return tuple(t.reshape(B, S, H, D).to(device=device, dtype=dtype) for t in (q, k, v))


def bench_query_sparse(args, device, dtype, run) -> list[dict]:
    import vdit_accel.kernels as K
    from vdit_accel.kernels.dispatch import check_xformers

    B, S, H, D = 1, args.tokens, args.heads, args.head_dim
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(B, S, H, D, generator=g).to(device=device, dtype=dtype) for _ in range(3))
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    rows = []
    t_full = run(lambda: F.scaled_dot_product_attention(qh, kh, vh))
    t_flash = None
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            t_flash = run(lambda: F.scaled_dot_product_attention(qh, kh, vh))
    has_triton = device.type == "cuda" and K.dispatch.check_triton(q)[0]
    has_xformers = check_xformers(q, k)[0]
    for theta in args.thetas:
        n = max(1, math.ceil(theta * S))
        idx = torch.randperm(S, generator=g)[:n].sort().values.to(device).unsqueeze(0)
        row = {"theta": theta, "selected": n, "t_sdpa_full_s": t_full, "t_flash_full_s": t_flash}
        row["t_sdpa_gathered_s"] = run(lambda: K.query_sparse_attention(q, k, v, idx, backend="sdpa"))
        ref_out, ref_lse = K.query_sparse_attention(q, k, v, idx, backend="sdpa")
        if has_triton:
            row["t_triton_s"] = run(lambda: K.query_sparse_attention(q, k, v, idx, backend="triton"))
            full = torch.empty_like(q)
            row["t_triton_scatter_s"] = run(lambda: K.query_sparse_attention(q, k, v, idx, backend="triton",
                                                                             out_full=full))
            out, lse = K.query_sparse_attention(q, k, v, idx, backend="triton")
            row["max_abs_err_out_vs_sdpa"] = (out.float() - ref_out.float()).abs().max().item()
            row["max_abs_err_lse_vs_sdpa"] = (lse - ref_lse).abs().max().item()
        if has_xformers:
            row["t_xformers_s"] = run(lambda: K.query_sparse_attention(q, k, v, idx, backend="xformers"))
        base = t_flash or t_full
        for key in ("t_triton_s", "t_sdpa_gathered_s", "t_xformers_s"):
            if row.get(key):
                name = key[2:-2]
                row[f"speedup_{name}"] = base / row[key]
                row[f"efficiency_{name}"] = base * theta / row[key]  # measured speedup / ideal 1/θ
                row[f"tflops_{name}"] = 4 * B * H * n * S * D / row[key] / 1e12
        rows.append(row)
        print(f"  query-sparse θ={theta}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                     for k, v in row.items() if k != "theta"), flush=True)
    return rows


def bench_channel_reuse(args, device, dtype, run) -> list[dict]:
    import vdit_accel.kernels as K

    grid = tuple(args.grid)
    B, H, D = 1, args.heads, args.head_dim
    q, k, v = video_queries(B, grid, H, D, dtype, device)
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    t_dense = run(lambda: F.scaled_dot_product_attention(qh, kh, vh))
    has_triton = device.type == "cuda" and K.dispatch.check_triton(q)[0]
    backend = "triton" if has_triton else "sdpa"
    rows, t_zero = [], None
    for theta in args.reuse_thetas:
        plan_kw = dict(tile_tokens=args.tile_tokens, tiles_per_group=args.tiles_per_group, criterion=args.criterion)
        plan = K.channel_reuse_plan(q, grid, theta, **plan_kw)
        row = {"theta": theta, "backend": backend, "saved_fraction": float(plan.saved_fraction),
               "t_sdpa_dense_s": t_dense,
               "t_plan_s": run(lambda: K.channel_reuse_plan(q, grid, theta, **plan_kw)),
               "t_kernel_s": run(lambda: K.channel_reuse_attention(q, k, v, plan, backend=backend))}
        if theta == 0:
            t_zero = row["t_kernel_s"]
        out, lse = K.channel_reuse_attention(q, k, v, plan, backend=backend)
        ref_out, ref_lse = K.channel_reuse_attention(q, k, v, plan, backend="sdpa")
        row["max_abs_err_out_vs_sdpa"] = (out.float() - ref_out.float()).abs().max().item()
        dense_out = F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2)
        row["rel_rms_vs_dense"] = ((out.float() - dense_out.float()).pow(2).mean().sqrt()
                                   / dense_out.float().pow(2).mean().sqrt()).item()
        row["speedup_vs_sdpa_dense"] = t_dense / row["t_kernel_s"]
        if t_zero:
            row["speedup_vs_kernel_theta0"] = t_zero / row["t_kernel_s"]
        rows.append(row)
        print(f"  channel-reuse θ={theta}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                      for k, v in row.items() if k != "theta"), flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- reporting


def fmt(x, spec=".3f"):
    return "–" if x is None else format(x, spec)


def markdown(result: dict) -> str:
    m, cfg = result["machine"], result["config"]
    lines = [f"# Attention kernels: {m.get('gpu', 'CPU smoke test (reference path, not a GPU measurement)')}", "",
             f"torch {m['torch']}, triton {m['triton']}, CUDA {m.get('cuda', '–')}, SM {m.get('sm', '–')}; "
             f"B=1, {cfg['heads']} heads x {cfg['head_dim']}, {cfg['tokens']} tokens, {cfg['dtype']}; median of "
             f"{cfg['repeats']} after {cfg['warmup']} warm-up calls.", "",
             "## Query-sparse attention", "",
             "Efficiency = measured speedup over full-sequence attention / ideal 1/θ (target >= 0.90). Full-sequence "
             "baseline: FlashAttention via SDPA where available, else SDPA's default.", "",
             "| θ | selected | full SDPA ms | full flash ms | triton ms | eff. triton | TFLOP/s triton | "
             "SDPA gathered ms | eff. SDPA gathered | xformers ms | eff. xformers | max err out | max err LSE |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ms = lambda r, k: fmt(None if r.get(k) is None else r[k] * 1e3)  # noqa: E731
    for r in result["query_sparse"]:
        lines.append(f"| {r['theta']} | {r['selected']} | {ms(r, 't_sdpa_full_s')} | {ms(r, 't_flash_full_s')} | "
                     f"{ms(r, 't_triton_s')} | {fmt(r.get('efficiency_triton'), '.2f')} | "
                     f"{fmt(r.get('tflops_triton'), '.0f')} | {ms(r, 't_sdpa_gathered_s')} | "
                     f"{fmt(r.get('efficiency_sdpa_gathered'), '.2f')} | {ms(r, 't_xformers_s')} | "
                     f"{fmt(r.get('efficiency_xformers'), '.2f')} | {fmt(r.get('max_abs_err_out_vs_sdpa'), '.1e')} | "
                     f"{fmt(r.get('max_abs_err_lse_vs_sdpa'), '.1e')} |")
    lines += ["", f"## Channel-block reuse (grid {tuple(cfg['grid'])}, tiles {cfg['tile_tokens']} tokens x "
              f"{cfg['tiles_per_group']}, criterion {cfg['criterion']})", "",
              "Saved = fraction of query-side partial products not computed. Speedups are measured wall-clock.", "",
              "| θ | backend | saved | kernel ms | plan ms | dense SDPA ms | speedup vs SDPA | "
              "speedup vs kernel θ=0 | "
              "rel. RMS vs dense | max err vs SDPA(Q̃) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["channel_reuse"]:
        lines.append(f"| {r['theta']} | {r['backend']} | {r['saved_fraction']:.3f} | {ms(r, 't_kernel_s')} | "
                     f"{ms(r, 't_plan_s')} | {ms(r, 't_sdpa_dense_s')} | {fmt(r.get('speedup_vs_sdpa_dense'), '.2f')}"
                     f" | {fmt(r.get('speedup_vs_kernel_theta0'), '.2f')} | {fmt(r.get('rel_rms_vs_dense'), '.1e')} | "
                     f"{fmt(r.get('max_abs_err_out_vs_sdpa'), '.1e')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU via the reference path")
    p.add_argument("--tokens", type=int, default=32760)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--grid", type=int, nargs=3, default=[21, 30, 52], help="latent token grid (F, H, W)")
    p.add_argument("--thetas", type=float, nargs="+", default=[1.0, 0.7, 0.5, 0.4])
    p.add_argument("--reuse-thetas", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.1, 0.3])
    p.add_argument("--tile-tokens", type=int, default=32)
    p.add_argument("--tiles-per-group", type=int, default=4)
    p.add_argument("--criterion", choices=["mean", "max"], default="mean")
    p.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default=None,
                   help="output folder (default: benchmarks/results; a temporary folder for --cpu-smoke)")
    args = p.parse_args(argv)

    if args.cpu_smoke:
        device = torch.device("cpu")
        args.tokens, args.heads, args.head_dim, args.grid = 4 * 6 * 8, 2, 64, [4, 6, 8]
        args.tile_tokens, args.tiles_per_group = 16, 2
        args.warmup, args.repeats = 1, min(args.repeats, 3)
        dtype = torch.float32
        out_dir = args.out or tempfile.mkdtemp(prefix="kernel_bench_smoke_")
        tag = "cpu-smoke"
    else:
        if not torch.cuda.is_available():
            print("kernel_bench.py: no CUDA device. This benchmark measures GPU kernels; run it on a GPU machine, or "
                  "use --cpu-smoke to check the script on tiny CPU shapes (reference path, no GPU numbers).",
                  file=sys.stderr)
            return 2
        device = torch.device("cuda")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
        out_dir = args.out or RESULTS
        tag = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    if args.grid[0] * args.grid[1] * args.grid[2] != args.tokens:
        n_grid = args.grid[0] * args.grid[1] * args.grid[2]
        p.error(f"--grid {args.grid} has {n_grid} tokens, --tokens is {args.tokens}")

    torch.backends.cuda.matmul.allow_tf32 = False
    run = timer(device, args.warmup, args.repeats)
    print(f"kernel_bench on {device} ({tag}), dtype {dtype}", flush=True)
    with torch.inference_mode():
        result = {
            "machine": machine(device),
            "config": {**vars(args), "dtype": str(dtype).replace("torch.", "")},
            "query_sparse": bench_query_sparse(args, device, dtype, run),
            "channel_reuse": bench_channel_reuse(args, device, dtype, run),
        }
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"kernels_{tag}")
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=2)
    with open(stem + ".md", "w") as f:
        f.write(markdown(result))
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
