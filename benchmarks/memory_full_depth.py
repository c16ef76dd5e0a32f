"""Peak memory at full depth: the Wan2.1-1.3B shape with all 30 layers, CFG on, dense against each cache mode.

The token-selection caches grow with depth (one set per block) and with CFG (one set per branch), so a figure
measured on 2 layers says little about a real model. This runs a Wan2.1-1.3B-shaped ``WanTransformer3DModel``
(12 heads × 128, FFN 8960, text dim 4096, 30 layers, random fp32 weights) on 5×12×26 = 1,560 video tokens and 512
text tokens, calling it per step under ``cache_context("cond")`` and ``cache_context("uncond")`` as ``WanPipeline``
does, and measures, each mode in its own process (so peaks do not mix):

* the resident set (RSS) after the model is loaded (the baseline: weights plus the runtime),
* the peak RSS during the steps (a thread samples ``/proc/self/statm`` every 2 ms; ``ru_maxrss`` cannot be used,
  its high-water mark is set while the random model is being initialised),
* the cache bytes actually held: the sum over the block hooks' per-branch states (``BlockCacheState.nbytes``) plus
  the whole-step forecast kept at the transformer level.

Modes: dense (no acceleration); vdit-accel with ``cache="output"``, ``"residual"``, ``"forecast"`` (fp32 caches) and
``"forecast"`` with ``cache_dtype="bfloat16"``, each on the schedule ``--schedule`` (default 1.0, 0.5: the dense step
fills every cache, the token-selected step uses them). Every step but the last runs both CFG branches; the last step
runs the ``cond`` branch only (``--last-step-branches``): by then both branches' caches are held, and the ``uncond``
call would repeat the same peak at the cost of another full-depth call (tens of seconds to minutes on a shared CPU).
Dense keeps nothing between calls, so its peak is that of one call; it runs ``--dense-steps`` steps (default 1).

    python benchmarks/memory_full_depth.py            # full run (30 layers; ~20 min CPU time)
    python benchmarks/memory_full_depth.py --quick    # tiny shape, seconds (the smoke test runs this)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import threading
import time

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# Wan2.1-1.3B's transformer config (diffusers' Wan-AI/Wan2.1-T2V-1.3B-Diffusers), and a tiny one for --quick.
SHAPES = {
    "wan1.3b": dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, cross_attn_norm=True,
                    qk_norm="rms_norm_across_heads", eps=1e-6),
    "tiny": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16,
                 out_channels=16, text_dim=32, freq_dim=32, ffn_dim=64, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", eps=1e-6),
}

# mode label -> TokenSelectionConfig keyword arguments (None: dense, no acceleration)
MODES = {
    "dense": None,
    "output": dict(cache="output"),
    "residual": dict(cache="residual"),
    "forecast": dict(cache="forecast"),
    "forecast-bf16": dict(cache="forecast", cache_dtype="bfloat16"),
}


def build(shape: str, layers: int, seed: int = 0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(num_layers=layers, **SHAPES[shape]).eval()


def call_inputs(model, frames: int, height: int, width: int, text_len: int, step: int, num_steps: int) -> dict:
    """One step's transformer inputs: the latent changes with the step; the timestep descends like a scheduler's."""
    g = torch.Generator().manual_seed(1000 + step)
    return dict(hidden_states=torch.randn(1, model.config.in_channels, frames, height, width, generator=g),
                timestep=torch.tensor([1000.0 * (1 - step / max(num_steps, 1)) - 1.0]), return_dict=False)


def text_inputs(model, text_len: int) -> dict[str, torch.Tensor]:
    """Prompt and negative-prompt embeddings (the two CFG branches see different text, as in WanPipeline)."""
    d = model.config.text_dim
    return {"cond": torch.randn(1, text_len, d, generator=torch.Generator().manual_seed(7)),
            "uncond": torch.randn(1, text_len, d, generator=torch.Generator().manual_seed(8))}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """Samples this process's resident set size every ``interval`` seconds; ``peak`` is the highest sample (bytes)."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def cache_bytes(transformer) -> dict[str, int]:
    """Bytes held by vdit-accel's caches, over all CFG branches: per-block token caches and the whole-step forecast."""
    from vdit_accel.methods.step_forecast import STEP_FORECAST_HOOK
    from vdit_accel.methods.token_selection import BLOCK_HOOK

    blocks = 0
    for block in transformer.blocks:
        registry = getattr(block, "_diffusers_hook", None)
        hook = registry.get_hook(BLOCK_HOOK) if registry is not None else None
        if hook is not None:
            blocks += sum(state.nbytes() for state in hook.state_manager._state_cache.values())
    step = 0
    registry = getattr(transformer, "_diffusers_hook", None)
    hook = registry.get_hook(STEP_FORECAST_HOOK) if registry is not None else None
    if hook is not None:
        step = sum(state.forecast.nbytes() for state in hook.state_manager._state_cache.values())
    return dict(blocks=blocks, step_forecast=step, total=blocks + step)


def child(args) -> None:
    """One mode in this process: load, accelerate, run the steps under both CFG branches; print one JSON line."""
    from vdit_accel import AccelerationConfig, BudgetSchedule, TokenSelectionConfig
    from vdit_accel.api import accelerate_transformer, set_step

    torch.set_num_threads(args.threads)
    t_load = time.perf_counter()
    model = build(args.shape, args.layers)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    ts_kwargs = MODES[args.child]
    budgets = list(args.schedule) if ts_kwargs is not None else [1.0] * args.dense_steps
    if ts_kwargs is not None:
        sched = BudgetSchedule(budgets=budgets)
        accelerate_transformer(model, AccelerationConfig(schedule=sched,
                                                         token_selection=TokenSelectionConfig(**ts_kwargs)), sched)
    texts = text_inputs(model, args.text)
    steps = [call_inputs(model, args.frames, args.height, args.width, args.text, s, len(budgets))
             for s in range(len(budgets))]
    gc.collect()
    load_s = time.perf_counter() - t_load
    baseline = rss_bytes()
    calls, cache_peak = [], dict(blocks=0, step_forecast=0, total=0)
    with RssSampler() as sampler, torch.no_grad():
        for s, kw in enumerate(steps):
            if ts_kwargs is not None:
                set_step(model, s, len(budgets))
            branches = args.last_step_branches if s == len(steps) - 1 else ["cond", "uncond"]
            for branch in branches:
                t0, c0 = time.perf_counter(), time.process_time()
                with model.cache_context(branch):
                    model(**kw, encoder_hidden_states=texts[branch])
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                held = cache_bytes(model) if ts_kwargs is not None else dict(blocks=0, step_forecast=0, total=0)
                if held["total"] > cache_peak["total"]:
                    cache_peak = held
                calls.append(dict(step=s, branch=branch, budget=budgets[s], wall_s=wall, cpu_s=cpu,
                                  rss_after=rss_bytes(), peak_so_far=sampler.peak, cache_bytes=held["total"]))
                print(f"[memory] {args.child}: step {s} {branch} θ={budgets[s]} {wall:.1f}s wall {cpu:.1f}s cpu, "
                      f"peak {sampler.peak / 2**30:.2f} GiB, caches {held['total'] / 2**20:.0f} MiB",
                      file=sys.stderr, flush=True)
    print(json.dumps(dict(mode=args.child, token_selection=ts_kwargs, budgets=budgets, weight_bytes=weight_bytes,
                          baseline_rss=baseline, peak_rss=sampler.peak, working_set=sampler.peak - baseline,
                          cache_bytes=cache_peak, load_s=load_s, calls=calls)))


def run_modes(args, on_mode=None) -> dict:
    """Each mode in its own process; ``on_mode(results so far)`` after each (a stopped run keeps what it measured)."""
    results = {}
    for mode in args.modes:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--shape", args.shape,
               "--layers", str(args.layers), "--frames", str(args.frames), "--height", str(args.height),
               "--width", str(args.width), "--text", str(args.text), "--threads", str(args.threads),
               "--dense-steps", str(args.dense_steps), "--schedule", *[str(b) for b in args.schedule],
               "--last-step-branches", *args.last_step_branches]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # stderr (progress) passes through
        if res.returncode != 0:
            raise RuntimeError(f"mode {mode!r} failed with exit code {res.returncode}")
        results[mode] = json.loads(res.stdout.strip().splitlines()[-1])
        results[mode]["process_wall_s"] = time.perf_counter() - t0
        dense = results.get("dense")
        for r in results.values():
            if dense is not None:
                r["peak_ratio_to_dense"] = r["peak_rss"] / dense["peak_rss"]
                r["working_set_ratio_to_dense"] = r["working_set"] / max(dense["working_set"], 1)
        if on_mode is not None:
            on_mode(results)
    return results


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def _mib(b: float) -> str:
    return f"{b / 2**20:.0f} MiB"


def markdown(result: dict) -> str:
    cfg, rows = result["config"], result["modes"]
    n_video = cfg["frames"] * (cfg["height"] // 2) * (cfg["width"] // 2)
    lines = [
        "# Peak memory at full depth: dense vs each cache mode", "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['platform']}, {result['machine']['cpus']} CPUs (shared with other jobs), "
        f"{result['machine']['mem_total_gib']:.1f} GiB RAM, torch {result['machine']['torch']}, "
        f"{cfg['threads']} torch thread(s); load average before {result['load_before']}, after "
        f"{result['load_after']}.  ",
        f"Model: WanTransformer3DModel, shape `{cfg['shape']}`, {cfg['layers']} layers, random fp32 weights "
        f"({_gib(next(iter(rows.values()))['weight_bytes'])}); latent 16×{cfg['frames']}×{cfg['height']}×"
        f"{cfg['width']} → {n_video} video tokens, {cfg['text']} text tokens; CFG on (every step calls "
        f"`cache_context(\"cond\")` then `(\"uncond\")`; the last step runs {cfg['last_step_branches']} only, "
        f"when both branches' caches are already held). Accelerated schedule {cfg['schedule']}; dense runs "
        f"{cfg['dense_steps']} step(s) (it keeps nothing between calls). Each mode in its own process.", "",
        "Peak RSS: highest resident set sampled every 2 ms during the steps. Baseline: RSS after loading the model "
        "(weights + runtime). Working set = peak − baseline. Cache bytes: what vdit-accel's caches hold at their "
        "largest (all blocks, both CFG branches, plus the whole-step forecast). Per block and branch, `output` and "
        "`residual` keep two [N, C] tensors (the block input and the cached output or residual), `forecast` three "
        "(the block input, the last value and its first difference), all in the cache dtype. The RSS above "
        "weights + caches + dense's working set is the allocator's: freed temporaries it keeps resident. "
        "The quality side of the trade-off (PSNR per mode and cache dtype): benchmarks/results/cache_modes.md "
        "(`benchmarks/cache_mode_compare.py`).", "",
        "| mode | peak RSS | baseline (loaded) | working set above weights | cache bytes held | working set / dense "
        "| peak / dense |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, r in rows.items():
        ws_ratio = r.get("working_set_ratio_to_dense")
        peak_ratio = r.get("peak_ratio_to_dense")
        lines.append(f"| {mode} | {_gib(r['peak_rss'])} | {_gib(r['baseline_rss'])} | {_mib(r['working_set'])} | "
                     f"{_mib(r['cache_bytes']['total'])} | {'—' if ws_ratio is None else f'{ws_ratio:.2f}×'} | "
                     f"{'—' if peak_ratio is None else f'{peak_ratio:.3f}×'} |")
    per_call = [f"{m}: " + ", ".join(f"{c['wall_s']:.0f}/{c['cpu_s']:.0f}" for c in r["calls"])
                for m, r in rows.items()]
    lines += ["", "Per-call wall/CPU seconds (steps × branches, in order): " + "; ".join(per_call) + "."]
    lines += [""] + [f"Note: {n}" for n in result.get("notes", [])] + [""]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="wan1.3b")
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--frames", type=int, default=5, help="latent frames")
    p.add_argument("--height", type=int, default=24, help="latent height (tokens: height/2)")
    p.add_argument("--width", type=int, default=52, help="latent width (tokens: width/2)")
    p.add_argument("--text", type=int, default=512, help="text tokens")
    p.add_argument("--schedule", type=float, nargs="+", default=[1.0, 0.5], help="accelerated modes' budgets")
    p.add_argument("--dense-steps", type=int, default=1)
    p.add_argument("--last-step-branches", nargs="+", choices=["cond", "uncond"], default=["cond"],
                   help="CFG branches run at the last step (earlier steps run both)")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny shape, 2 layers: a smoke run in seconds")
    p.add_argument("--out", default=os.path.join(RESULTS, "memory_full_depth"), help="output path without suffix")
    p.add_argument("--child", choices=list(MODES), default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.shape, args.layers, args.frames, args.height, args.width, args.text = "tiny", 2, 2, 8, 8, 8
    if args.child:
        return child(args)
    if "dense" in args.modes:
        args.modes = ["dense"] + [m for m in args.modes if m != "dense"]
    load_before = [round(x, 2) for x in os.getloadavg()]
    print(save(args, load_before, run_modes(args, on_mode=lambda modes: save(args, load_before, modes))))


def save(args, load_before: list[float], modes: dict) -> str:
    """Write ``--out``.json and .md with the modes measured so far; returns the Markdown."""
    with open("/proc/meminfo") as f:
        mem_total = int(f.readline().split()[1]) * 1024
    result = dict(
        benchmark="peak memory at full depth, dense vs cache modes, CPU",
        command=" ".join(["python", os.path.relpath(os.path.abspath(__file__)), *sys.argv[1:]]),
        machine=dict(platform=platform.platform(), processor=platform.processor(), cpus=os.cpu_count(),
                     mem_total_gib=mem_total / 2**30, torch=torch.__version__),
        config=dict(shape=args.shape, layers=args.layers, frames=args.frames, height=args.height, width=args.width,
                    text=args.text, schedule=args.schedule, dense_steps=args.dense_steps, threads=args.threads,
                    last_step_branches=args.last_step_branches),
        load_before=load_before, load_after=[round(x, 2) for x in os.getloadavg()], modes=modes,
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    md = markdown(result)
    with open(args.out + ".md", "w") as f:
        f.write(md)
    return md


if __name__ == "__main__":
    main()
