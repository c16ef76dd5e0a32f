"""Speed of token selection on a Wan2.1-1.3B-shaped transformer on CPU: measured wall-clock ratio vs ideal.

Real Wan2.1-1.3B widths (12 heads × 128, FFN 8960, text_dim 4096), fewer layers, random weights, 4,200 video
tokens (latent 16×5×56×60 → 5×28×30 after patching) and 512 text tokens. For each budget θ it times one transformer
call (a denoising step after a dense step filled the caches), interleaving dense and accelerated calls, and reports
the median of several runs. The ideal is computed from the model's FLOP count (everything scales with θ except the
self-attention key/value projections and the work outside the blocks). Peak memory is measured as the peak RSS of a
separate process running dense only and one running accelerated only.

    python benchmarks/bench_speed.py                 # full run (~10 min on 2 cores), writes benchmarks/results/
    python benchmarks/bench_speed.py --layers 1 --repeats 2 --frames 2   # quick smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def build(layers: int):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6,
    ).eval()


def inputs(frames: int, height: int, width: int, step: int = 0):
    g = torch.Generator().manual_seed(step)
    return dict(hidden_states=torch.randn(1, 16, frames, height, width, generator=g),
                encoder_hidden_states=torch.randn(1, 512, 4096, generator=torch.Generator().manual_seed(99)),
                timestep=torch.tensor([900.0 - 100 * step]), return_dict=False)


def total_flops(model, n_video: int, n_text: int, budget: float) -> float:
    from vdit_accel.cost import block_flops

    cfg = model.config
    c = cfg.num_attention_heads * cfg.attention_head_dim
    per_block = block_flops(model, n_video, n_text).at(budget)
    outside = 2 * n_text * (cfg.text_dim * c + c * c) + 2 * n_video * (2 * 16 * 4 * c)  # text embedder, patch in/out
    return cfg.num_layers * per_block + outside


def time_call(model, kw) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        model(**kw)
    return time.perf_counter() - t0


def speed(args) -> dict:
    import vdit_accel
    from vdit_accel import AccelerationConfig, BudgetSchedule
    from vdit_accel.api import accelerate_transformer

    dense_model = build(args.layers)
    acc_model = build(args.layers)
    acc_model.load_state_dict(dense_model.state_dict())
    f, h, w = args.frames, args.height, args.width
    n_video = f * (h // 2) * (w // 2)
    rows = []
    for budget in args.budgets:
        sched = BudgetSchedule(budgets=[1.0, budget])
        cfg = AccelerationConfig(schedule=sched)
        handle = accelerate_transformer(acc_model, cfg, sched, step_resolver=None)
        dense_t, acc_t = [], []
        for r in range(args.repeats):
            vdit_accel.set_step(acc_model, 0, 2)
            with acc_model.cache_context("cond"):
                time_call(acc_model, inputs(f, h, w, 0))  # dense step: fills caches (not timed)
            vdit_accel.set_step(acc_model, 1, 2)
            kw = inputs(f, h, w, 1)
            with acc_model.cache_context("cond"):
                acc_t.append(time_call(acc_model, kw))
            dense_t.append(time_call(dense_model, kw))
            acc_model._diffusers_hook.reset_stateful_hooks()
        handle.remove()
        d, a = statistics.median(dense_t), statistics.median(acc_t)
        ideal = total_flops(dense_model, n_video, 512, 1.0) / total_flops(dense_model, n_video, 512, budget)
        row = dict(budget=budget, dense_s=d, accelerated_s=a, speedup=d / a, ideal_speedup=ideal,
                   fraction_of_ideal=(d / a) / ideal, dense_runs=dense_t, accelerated_runs=acc_t)
        rows.append(row)
        print(f"θ={budget:.2f}  dense {d:.3f}s  accelerated {a:.3f}s  speedup {d / a:.2f}x  "
              f"ideal {ideal:.2f}x  ({(d / a) / ideal:.0%} of ideal)", flush=True)
    return dict(n_video=n_video, n_text=512, rows=rows)


class RssSampler:
    """Samples this process's resident set size every few milliseconds; ``peak_mb`` is the highest sample.

    ``ru_maxrss`` cannot be used: its high-water mark is set while the random model is being initialised."""

    def __init__(self, interval: float = 0.005):
        import threading

        self.interval, self.peak_kb, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss_kb() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def _run(self):
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, self.rss_kb())
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024


def peak_rss_child(args) -> None:
    """Child process: run 3 steps dense or accelerated and print the peak RSS during the steps."""
    import gc

    import vdit_accel  # noqa: F401
    from vdit_accel import AccelerationConfig, BudgetSchedule
    from vdit_accel.api import accelerate_transformer, set_step

    model = build(args.layers)
    kws = [inputs(args.frames, args.height, args.width, s) for s in range(3)]
    if args.mode == "accelerated":
        sched = BudgetSchedule(budgets=[1.0, args.mem_budget, args.mem_budget])
        accelerate_transformer(model, AccelerationConfig(schedule=sched), sched, step_resolver=None)
    gc.collect()
    base = RssSampler.rss_kb() / 1024
    with RssSampler() as sampler:
        for s, kw in enumerate(kws):
            if args.mode == "accelerated":
                set_step(model, s, 3)
            with model.cache_context("cond"):
                time_call(model, kw)
    print(json.dumps(dict(mode=args.mode, peak_rss_mb=sampler.peak_mb, before_steps_rss_mb=base)))


def memory(args) -> dict:
    out = {}
    for mode in ("dense", "accelerated"):
        cmd = [sys.executable, __file__, "--child", mode, "--layers", str(args.layers), "--frames", str(args.frames),
               "--height", str(args.height), "--width", str(args.width), "--mem-budget", str(args.mem_budget)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    d, a = out["dense"], out["accelerated"]
    out["peak_ratio"] = a["peak_rss_mb"] / d["peak_rss_mb"]
    out["working_set_ratio"] = (a["peak_rss_mb"] - a["before_steps_rss_mb"]) / (d["peak_rss_mb"] - d["before_steps_rss_mb"])
    print(f"peak RSS dense {d['peak_rss_mb']:.0f} MB, accelerated (θ={args.mem_budget}) {a['peak_rss_mb']:.0f} MB: "
          f"{out['peak_ratio']:.3f}x (working set above the loaded model: {out['working_set_ratio']:.2f}x)")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--frames", type=int, default=5, help="latent frames (F')")
    p.add_argument("--height", type=int, default=56, help="latent height (H' = height/2)")
    p.add_argument("--width", type=int, default=60, help="latent width (W' = width/2)")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.7, 0.5, 0.4])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mem-budget", type=float, default=0.4)
    p.add_argument("--child", choices=["dense", "accelerated"], default=None, dest="mode")
    p.add_argument("--out", default=os.path.join(RESULTS, "speed_wan1.3b_shape_cpu"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.mode:
        return peak_rss_child(args)
    result = dict(
        benchmark="token selection, Wan2.1-1.3B-shaped transformer, CPU",
        command=" ".join([os.path.basename(sys.executable), *sys.argv]),
        machine=dict(platform=platform.platform(), processor=platform.processor(), cpus=os.cpu_count(),
                     torch_threads=args.threads, torch=torch.__version__),
        config=dict(layers=args.layers, heads=12, head_dim=128, ffn_dim=8960, latent=(16, args.frames, args.height,
                    args.width), repeats=args.repeats),
        speed=speed(args), memory=memory(args),
    )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    lines = [f"# {result['benchmark']}", "", f"Command: `{result['command']}`  ",
             f"Machine: {result['machine']}  ",
             f"Video tokens {result['speed']['n_video']}, text tokens 512, {args.layers} layers, median of "
             f"{args.repeats} interleaved runs. Speedup = measured wall-clock ratio of one transformer call; "
             f"ideal = computed from the FLOP count.", "",
             "| θ | dense s | accelerated s | measured speedup | ideal (computed) | fraction of ideal |",
             "|---|---|---|---|---|---|"]
    for r in result["speed"]["rows"]:
        lines.append(f"| {r['budget']} | {r['dense_s']:.3f} | {r['accelerated_s']:.3f} | {r['speedup']:.2f}x | "
                     f"{r['ideal_speedup']:.2f}x | {r['fraction_of_ideal']:.0%} |")
    m = result["memory"]
    lines += ["", f"Peak RSS (separate processes, 3 steps): dense {m['dense']['peak_rss_mb']:.0f} MB, accelerated "
              f"θ={args.mem_budget} {m['accelerated']['peak_rss_mb']:.0f} MB → **{m['peak_ratio']:.3f}×**; working "
              f"set above the loaded model {m['working_set_ratio']:.2f}×.", ""]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
