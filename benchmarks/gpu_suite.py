"""One-command GPU suite (<= 8 minutes on one H100/H200): kernels, end to end eager and compiled, diffusers' caches.

(a) Kernel: query-sparse attention (Triton, rows gathered in-kernel) against SDPA/FlashAttention on the gathered
    queries and against dense attention, at θ 0.7 / 0.5 / 0.4, Wan2.1-1.3B heads (12 × 128) at 32,760 tokens (bf16).
(b) End to end: the Wan2.1-1.3B transformer config at full depth (30 layers), bf16, 480p × 81 frames (latent
    16 × 21 × 60 × 104 → 32,760 video tokens, 512 text tokens), random weights. One transformer call per denoising
    step, timed after a dense call filled the caches: dense against accelerated at θ 0.7 / 0.5 / 0.4 and at the
    ``speedup=`` presets, eager and ``torch.compile``d, with the fraction of the FLOP ideal (``vdit_accel.cost``) and
    the peak memory. A preset's time is composed from the per-budget times of its 50-step schedule.
(c) FirstBlockCache and TaylorSeer (diffusers) on the same transformer: a short denoising loop, against dense and
    vdit-accel ``speedup=2`` on the same loop.

    python benchmarks/gpu_suite.py            # CUDA; writes benchmarks/results/gpu_<device>.{md,json}
    python benchmarks/gpu_suite.py --dry-run  # the same code at tiny shapes on CPU (< 1 min), writes to --out

Sections stop early (the report says so) when ``--budget-s`` (default 450 s) is spent, so the first run on a lent
GPU always writes a report.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, HERE)

WAN13B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
              text_dim=4096, freq_dim=256, ffn_dim=8960, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
              eps=1e-6)
TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=256, ffn_dim=32, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
            rope_max_seq_len=32)
FULL = SimpleNamespace(model=WAN13B, layers=30, latent=(1, 16, 21, 60, 104), text=512, tokens=32760, heads=12,
                       head_dim=128, dtype=torch.bfloat16, warmup=2, repeats=3, loop_steps=10, backend="inductor")
DRY = SimpleNamespace(model=TINY, layers=2, latent=(1, 16, 3, 8, 8), text=8, tokens=256, heads=2, head_dim=32,
                      dtype=torch.bfloat16, warmup=1, repeats=1, loop_steps=6, backend="eager")
THETAS = (0.7, 0.5, 0.4)
PRESETS = (2.0, 3.0)
PRESET_STEPS = 50


class Clock:
    """Wall-clock per call (CUDA-synchronised) and the suite's time budget."""

    def __init__(self, device: torch.device, budget_s: float):
        self.device, self.budget_s, self.start = device, budget_s, time.perf_counter()

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time(self, fn) -> float:
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t0

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def reset_peak(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None


# ------------------------------------------------------------------------------------------------- (a) kernel
def kernel_section(shape, device, clock: Clock) -> dict:
    import kernel_bench

    args = SimpleNamespace(tokens=shape.tokens, heads=shape.heads, head_dim=shape.head_dim, thetas=list(THETAS))
    run = kernel_bench.timer(device, warmup=shape.warmup + 1, repeats=max(3, shape.repeats))
    rows = kernel_bench.bench_query_sparse(args, device, shape.dtype, run)
    return dict(tokens=shape.tokens, heads=shape.heads, head_dim=shape.head_dim, dtype=str(shape.dtype), rows=rows)


# --------------------------------------------------------------------------------------------- (b) end to end
def build(shape, device):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(num_layers=shape.layers, **shape.model).eval().to(device)
    if shape.dtype == torch.float32:
        return model
    # as from_pretrained(torch_dtype=...) loads it: the class's _keep_in_fp32_modules (norms, rope, ...) stay fp32
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, param in model.named_parameters():
        if not keep.intersection(name.split(".")):
            param.data = param.data.to(shape.dtype)
    return model


def call_inputs(shape, device, step: int = 0) -> dict:
    g = torch.Generator().manual_seed(step)
    lat = torch.randn(*shape.latent, generator=g)
    text = torch.randn(1, shape.text, shape.model["text_dim"], generator=torch.Generator().manual_seed(99))
    return dict(hidden_states=lat.to(device, shape.dtype), encoder_hidden_states=text.to(device, shape.dtype),
                timestep=torch.tensor([900.0 - 10 * step], device=device), return_dict=False)


def token_counts(shape) -> tuple[int, int]:
    _, _, f, h, w = shape.latent
    p = shape.model["patch_size"]
    return (f // p[0]) * (h // p[1]) * (w // p[2]), shape.text


def ideal(model, n_video: int, n_text: int, budgets: list[float]) -> float:
    """FLOP-ideal speedup of the blocks over a list of per-call budgets (``vdit_accel.cost``)."""
    from vdit_accel.cost import block_flops

    f = block_flops(model, n_video, n_text)
    return sum(f.at(1.0) for _ in budgets) / sum(f.at(b) for b in budgets)


def preset_budgets(model, speedup: float, n_video: int, n_text: int) -> list[float]:
    from vdit_accel.cost import CostModel
    from vdit_accel.schedule import BudgetSchedule

    return BudgetSchedule.for_speedup(speedup).resolve(PRESET_STEPS, CostModel.from_flops(model, n_video, n_text))


def time_dense(model, shape, device, clock: Clock) -> dict:
    kw = call_inputs(shape, device)
    with torch.inference_mode():
        t_first = clock.time(lambda: model(**kw))
        for _ in range(shape.warmup - 1):
            model(**kw)
        clock.reset_peak()
        times = [clock.time(lambda: model(**kw)) for _ in range(shape.repeats)]
    return dict(seconds=statistics.median(times), first_call_s=t_first, peak_gib=clock.peak_gib())


def time_accelerated(model, shape, device, clock: Clock, budgets: list[float], fill_eager: bool) -> dict:
    """One accelerated handle runs a dense call, then ``warmup + repeats`` calls at each distinct budget in turn (the
    step advances every call, as in a run, so the caches stay valid). Returns per budget: median seconds, peak GiB.

    ``fill_eager``: run the cache-filling dense call eagerly on a compiled model. It is the same dense work, and
    compiling it would cost a full-model compile (minutes at 30 layers) that this suite has no time for; inductor's
    outputs of that graph would also alias one another, which costs one more sparse graph on the next call."""
    from vdit_accel import AccelerationConfig, set_step
    from vdit_accel.api import accelerate_transformer

    per = shape.warmup + shape.repeats
    schedule = [1.0] + [b for b in budgets for _ in range(per)]
    config = AccelerationConfig(schedule=schedule)
    handle = accelerate_transformer(model, config, config.schedule, step_resolver=None)
    out, step = {}, 0
    try:
        kw = call_inputs(shape, device)
        with torch.inference_mode():
            set_step(model, 0, len(schedule))
            if fill_eager:
                with torch.compiler.set_stance("force_eager"):
                    t_first = clock.time(lambda: model(**kw))
            else:
                t_first = clock.time(lambda: model(**kw))
            for b in budgets:
                times = []
                clock.reset_peak()
                for i in range(per):
                    step += 1
                    set_step(model, step, len(schedule))
                    times.append(clock.time(lambda: model(**kw)))
                rec = handle.runtime.summary()["steps"][-1]
                out[b] = dict(seconds=statistics.median(times[shape.warmup:]), first_call_s=times[0],
                              peak_gib=clock.peak_gib(),
                              computed_token_fraction=rec["ffn_tokens"] / max(1, rec["dense_tokens"]))
                if clock.left() < 0:
                    break
            out["first_dense_call_s"] = t_first
    finally:
        handle.remove()
    return out


def e2e_section(model, shape, device, clock: Clock, compiled: bool, backend: str) -> dict:
    import torch._dynamo
    import torch._dynamo.testing

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)  # benchmark process only
    n_video, n_text = token_counts(shape)
    counter = None
    if compiled:
        torch._dynamo.reset()
        counter = torch._dynamo.testing.CompileCounterWithBackend(backend)
        model.compile(backend=counter)
    presets = {s: preset_budgets(model, s, n_video, n_text) for s in PRESETS}
    budgets = sorted({*THETAS, *(b for p in presets.values() for b in p if b < 1.0)}, reverse=True)
    t0 = time.perf_counter()
    dense = time_dense(model, shape, device, clock)
    dense["compile_and_first_call_s"] = time.perf_counter() - t0 if compiled else None
    acc = time_accelerated(model, shape, device, clock, budgets, fill_eager=compiled)
    rows = []
    for theta in THETAS:
        if theta in acc:
            speed = dense["seconds"] / acc[theta]["seconds"]
            idl = ideal(model, n_video, n_text, [theta])
            rows.append(dict(setting=f"θ={theta}", seconds=acc[theta]["seconds"], speedup=speed, ideal=idl,
                             fraction_of_ideal=speed / idl, peak_gib=acc[theta]["peak_gib"],
                             first_call_s=acc[theta]["first_call_s"]))
    for s, plan in presets.items():
        if all(b >= 1.0 or b in acc for b in plan):
            total = sum(dense["seconds"] if b >= 1.0 else acc[b]["seconds"] for b in plan)
            speed = dense["seconds"] * len(plan) / total
            idl = ideal(model, n_video, n_text, plan)
            rows.append(dict(setting=f"speedup={s} ({PRESET_STEPS} steps, composed)", seconds=total / len(plan),
                             speedup=speed, ideal=idl, fraction_of_ideal=speed / idl,
                             peak_gib=max((acc[b]["peak_gib"] or 0) for b in plan if b < 1.0) or None,
                             budgets=sorted(set(plan))))
    result = dict(mode=f"compiled ({backend})" if compiled else "eager", dense=dense, rows=rows,
                  first_accelerated_dense_call_s=acc.get("first_dense_call_s"),
                  video_tokens=n_video, text_tokens=n_text, complete=len(rows) == len(THETAS) + len(PRESETS))
    if counter is not None:
        result["compiled_graphs"] = counter.frame_count
    return result


# ------------------------------------------------------------------------------------------- (c) caches
def loop_time(model, shape, device, clock: Clock, before_step=None) -> float:
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)
    scheduler.set_timesteps(shape.loop_steps)
    kw = call_inputs(shape, device)
    lat = kw.pop("hidden_states")
    kw.pop("timestep")

    def run():
        nonlocal lat
        for i, t in enumerate(scheduler.timesteps):
            if before_step is not None:
                before_step(i)
            with torch.inference_mode(), model.cache_context("cond"):
                out = model(hidden_states=lat, timestep=t.expand(1).to(device), **kw)[0]
            lat = scheduler.step(out, t, lat, return_dict=False)[0]

    seconds = clock.time(run)
    model._reset_stateful_cache()
    return seconds


def caches_section(model, shape, device, clock: Clock) -> dict:
    from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig

    from vdit_accel import AccelerationConfig, set_step
    from vdit_accel.api import accelerate_transformer
    from vdit_accel.schedule import dense_warmup_steps

    steps = shape.loop_steps
    rows = {"dense": loop_time(model, shape, device, clock)}  # also the warm-up
    rows["dense"] = loop_time(model, shape, device, clock)
    configs = {
        "FirstBlockCache (threshold=0.1)": FirstBlockCacheConfig(threshold=0.1),
        "TaylorSeer (interval=2, order=1)": TaylorSeerCacheConfig(
            cache_interval=2, disable_cache_before_step=dense_warmup_steps(steps), max_order=1,
            taylor_factors_dtype=torch.float32, cache_identifiers=[r"(transformer_)?blocks\.\d+\.attn\d"]),
    }
    for label, cfg in configs.items():
        if clock.left() < 0:
            rows[label] = "skipped: time budget spent"
            continue
        try:
            model.enable_cache(cfg)
            rows[label] = loop_time(model, shape, device, clock)
        except Exception as e:  # noqa: BLE001 - a cache that cannot run here is a result
            rows[label] = f"does not run: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        finally:
            if model.is_cache_enabled:
                model.disable_cache()
    config = AccelerationConfig(speedup=2.0)
    handle = accelerate_transformer(model, config, config.schedule, step_resolver=None)
    try:
        rows["vdit-accel (speedup=2.0)"] = loop_time(model, shape, device, clock, lambda i: set_step(model, i, steps))
    finally:
        handle.remove()
    dense = rows["dense"]
    return dict(steps=steps, rows={k: (dict(seconds=v, speedup=dense / v) if isinstance(v, float) else v)
                                   for k, v in rows.items()})


# ------------------------------------------------------------------------------------------------ report
def _f(x, spec=".3f"):
    return "–" if x is None else format(x, spec)


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"# GPU suite: {m.get('gpu', m['device'])}", "",
             f"Command: `{res['command']}`; torch {m['torch']}, triton {m.get('triton')}; total "
             f"{res['total_seconds']:.0f} s.", ""]
    k = res.get("kernel")
    if isinstance(k, dict):
        lines += [f"## (a) Query-sparse attention kernel ({k['heads']} heads × {k['head_dim']}, {k['tokens']} tokens, "
                  f"{k['dtype']})", "", "efficiency = speedup over dense / ideal 1/θ", "",
                  "| θ | dense SDPA ms | dense flash ms | Triton ms | SDPA gathered ms | xformers ms | Triton eff. | "
                  "gathered eff. |", "|---|---|---|---|---|---|---|---|"]
        for r in k["rows"]:
            ms = [None if r.get(c) is None else 1e3 * r[c] for c in
                  ("t_sdpa_full_s", "t_flash_full_s", "t_triton_s", "t_sdpa_gathered_s", "t_xformers_s")]
            lines.append(f"| {r['theta']} | " + " | ".join(_f(x, ".2f") for x in ms)
                         + f" | {_f(r.get('efficiency_triton'))} | {_f(r.get('efficiency_sdpa_gathered'))} |")
        lines.append("")
    elif k:
        lines += ["## (a) Kernel", "", str(k), ""]
    for key in ("e2e_eager", "e2e_compiled"):
        e = res.get(key)
        if not isinstance(e, dict):
            if e:
                lines += [f"## (b) End to end, {key}", "", str(e), ""]
            continue
        d = e["dense"]
        lines += [f"## (b) End to end, {e['mode']}: {res['e2e_config']}", "",
                  f"Dense: {d['seconds']:.3f} s per call, peak {_f(d['peak_gib'], '.1f')} GiB"
                  + (f"; compile + first call {d['compile_and_first_call_s']:.0f} s" if d.get(
                      "compile_and_first_call_s") else "")
                  + (f"; {e['compiled_graphs']} compiled graphs" if "compiled_graphs" in e else "")
                  + ("" if e["complete"] else "; INCOMPLETE (time budget)") + ".", "",
                  "| setting | s per call | speedup | FLOP ideal | fraction of ideal | peak GiB | first call s |",
                  "|---|---|---|---|---|---|---|"]
        for r in e["rows"]:
            lines.append(f"| {r['setting']} | {r['seconds']:.3f} | {r['speedup']:.2f} | {r['ideal']:.2f} | "
                         f"{r['fraction_of_ideal']:.2f} | {_f(r['peak_gib'], '.1f')} | {_f(r.get('first_call_s'))} |")
        lines.append("")
    c = res.get("caches")
    if isinstance(c, dict):
        lines += [f"## (c) Caches on the same transformer ({c['steps']}-step loop, eager)", "",
                  "| method | loop s | speedup |", "|---|---|---|"]
        for label, r in c["rows"].items():
            lines.append(f"| {label} | {r['seconds']:.2f} | {r['speedup']:.2f} |" if isinstance(r, dict)
                         else f"| {label} | {r} | |")
        lines.append("")
    elif c:
        lines += ["## (c) Caches", "", str(c), ""]
    return "\n".join(lines)


def machine(device: torch.device) -> dict:
    import kernel_bench

    return dict(kernel_bench.machine(device), device=device.type)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU: checks the code, no GPU figures")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results; dry run: a temp folder)")
    p.add_argument("--budget-s", type=float, default=450.0, help="stop starting new sections after this many seconds")
    p.add_argument("--skip", default="", help="comma list of sections to skip: kernel,eager,compiled,caches")
    args = p.parse_args(argv)
    if args.dry_run:
        device, shape = torch.device("cpu"), DRY
    else:
        if not torch.cuda.is_available():
            p.error("needs a CUDA GPU (use --dry-run to check the code on CPU)")
        device, shape = torch.device("cuda"), FULL
    out_dir = args.out or (tempfile.mkdtemp(prefix="gpu_suite_") if args.dry_run else RESULTS)
    os.makedirs(out_dir, exist_ok=True)
    clock = Clock(device, args.budget_s)
    skip = set(filter(None, args.skip.split(",")))
    mach = machine(device)
    name = re.sub(r"[^a-z0-9]+", "_", (mach.get("gpu") or "cpu_dry_run").lower()).strip("_")
    res = dict(machine=mach, command="python benchmarks/gpu_suite.py " + " ".join(argv or sys.argv[1:]),
               e2e_config=f"Wan2.1-1.3B config, {shape.layers} layers, {str(shape.dtype)[6:]}, latent "
                          f"{'×'.join(map(str, shape.latent[1:]))} ({token_counts(shape)[0]} video + {shape.text} "
                          f"text tokens), random weights, {shape.repeats} timed calls after {shape.warmup} warm-up")
    model = {}

    def transformer():
        if "m" not in model:
            t0 = time.perf_counter()
            model["m"] = build(shape, device)
            res["build_s"] = time.perf_counter() - t0
        return model["m"]

    # compiled last: the model stays compiled once compiled
    sections = [("kernel", lambda: kernel_section(shape, device, clock)),
                ("e2e_eager", lambda: e2e_section(transformer(), shape, device, clock, False, shape.backend)),
                ("caches", lambda: caches_section(transformer(), shape, device, clock)),
                ("e2e_compiled", lambda: e2e_section(transformer(), shape, device, clock, True, shape.backend))]
    for key, fn in sections:
        if key.replace("e2e_", "") in skip:
            res[key] = "skipped (--skip)"
        elif clock.left() < 0:
            res[key] = f"skipped: the --budget-s {args.budget_s:.0f} s was spent"
        else:
            t0 = time.perf_counter()
            try:
                res[key] = fn()
            except Exception as e:  # noqa: BLE001 - report and go on: the other sections still produce figures
                if args.dry_run:
                    raise
                res[key] = f"failed: {type(e).__name__}: {str(e)[:500]}"
            print(f"[gpu_suite] {key}: {time.perf_counter() - t0:.1f}s", flush=True)
    res["total_seconds"] = time.perf_counter() - clock.start
    base = os.path.join(out_dir, f"gpu_{name}")
    with open(base + ".json", "w") as f:
        json.dump(res, f, indent=1, default=str)
    with open(base + ".md", "w") as f:
        f.write(markdown(res) + "\n")
    print(f"[gpu_suite] wrote {base}.md and .json ({res['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
