"""Speed of each cache mode on the Wan2.1-1.3B shape: time per step at θ = 1.0 / 0.7 / 0.5 / 0 against dense.

A Wan2.1-1.3B-shaped ``WanTransformer3DModel`` (12 heads × 128, FFN 8960, text dim 4096; ``--layers`` layers,
random fp32 weights) on 5×28×30 = 4,200 video tokens and 512 text tokens. One repetition times, in turn (the order
rotates between repetitions, so slow phases of a shared machine hit every method):

* **dense**: the plain transformer, no acceleration;
* **fast path on / off**: vdit-accel on the schedule [1.0, 1.0, 1.0], the second call timed. With
  ``dense_fast_path=True`` (default) a dense step that no later step needs caches from runs the family's own
  processors; with ``dense_fast_path=False`` it runs the token-selection path and keeps every cache (which is what a
  budget-1.0 step followed by token-selected steps always does). The issue's target is ≤ 1.03× dense;
* **each cache mode** (``output``, ``residual``, ``forecast``, ``forecast`` with bf16 caches) on the schedule
  [1.0, 0.7, 0.5, 0.0], every call timed: θ = 1.0 keeping the caches, θ = 0.7 and 0.5 token-selected, θ = 0 a
  skipped step (no block runs; the output is forecast; the issue's target is ≤ 5 % of a dense step).

Wall-clock and process CPU time (``time.process_time``) are both reported; the median over repetitions is kept. The
measured speedup is compared with the FLOP ideal (:func:`vdit_accel.cost.ideal_speedup`, blocks only) and with the
cost model's prediction (:meth:`vdit_accel.cost.CostModel.from_flops`: the FLOP model plus its per-block overhead);
the issue's target is a measured speedup ≥ 0.9 of the prediction.

    python benchmarks/cache_mode_speed.py             # full run (2 layers, 3 repetitions; ~15 min on 2 shared cores)
    python benchmarks/cache_mode_speed.py --quick     # tiny shape, seconds (the smoke test runs this)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memory_full_depth import MODES, RESULTS, build, call_inputs, text_inputs  # noqa: E402

CACHE_MODES = {k: v for k, v in MODES.items() if v is not None}
SEQUENCE = [1.0, 0.7, 0.5, 0.0]  # budgets of each cache mode's timed run, step by step
FAST_PATH_SCHEDULE = [1.0, 1.0, 1.0]
FAST_PATH_CACHE = "forecast"  # the cache the fast-path-off run keeps (the fast path itself keeps none)


def timed_call(model, kw: dict, enc: torch.Tensor) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    with model.cache_context("cond"):
        model(**kw, encoder_hidden_states=enc)
    return time.perf_counter() - t0, time.process_time() - c0


def run_schedule(model, budgets: list[float], ts_kwargs: dict, steps: list[dict], enc) -> list[tuple[float, float]]:
    """Accelerate ``model`` on ``budgets``, time every step, remove the acceleration again."""
    from vdit_accel import AccelerationConfig, BudgetSchedule, TokenSelectionConfig
    from vdit_accel.api import accelerate_transformer, set_step

    sched = BudgetSchedule(budgets=budgets)
    handle = accelerate_transformer(model, AccelerationConfig(schedule=sched,
                                                              token_selection=TokenSelectionConfig(**ts_kwargs)), sched)
    try:
        times = []
        for s in range(len(budgets)):
            set_step(model, s, len(budgets))
            times.append(timed_call(model, steps[s], enc))
        return times
    finally:
        handle.remove()


def measure(args, log=print, on_rep=None) -> dict:
    """Time every method ``args.repeats`` times; ``on_rep(summary)`` is called after each repetition with the
    medians so far (a long run leaves usable results if it is stopped)."""
    torch.set_num_threads(args.threads)
    model = build(args.shape, args.layers)
    n_video = args.frames * (args.height // 2) * (args.width // 2)
    enc = text_inputs(model, args.text)["cond"]
    n = max(len(SEQUENCE), len(FAST_PATH_SCHEDULE))
    steps = [call_inputs(model, args.frames, args.height, args.width, args.text, s, n) for s in range(n)]
    raw: dict[str, list] = {"dense": []}
    raw.update({"fast_path_on": [], "fast_path_off": []})
    raw.update({m: [] for m in args.modes})

    def dense():
        raw["dense"].append(timed_call(model, steps[1], enc))

    def fast(on: bool):
        key = "fast_path_on" if on else "fast_path_off"
        times = run_schedule(model, FAST_PATH_SCHEDULE, dict(dense_fast_path=on, cache=FAST_PATH_CACHE), steps, enc)
        raw[key].append(times[1])

    def mode(name: str):
        raw[name].append(run_schedule(model, SEQUENCE, CACHE_MODES[name], steps, enc))

    methods = [("dense", dense), ("fast_path_on", lambda: fast(True)), ("fast_path_off", lambda: fast(False))]
    methods += [(m, (lambda m=m: mode(m))) for m in args.modes]
    with torch.no_grad():
        timed_call(model, steps[0], enc)  # warm-up (allocator, lazy init), not timed
        for rep in range(args.repeats):
            k = rep % len(methods)
            for label, fn in methods[k:] + methods[:k]:
                t0 = time.perf_counter()
                fn()
                log(f"[speed] rep {rep + 1}/{args.repeats} {label}: {time.perf_counter() - t0:.1f}s", flush=True)
            if on_rep is not None:
                on_rep(summarize(args, model, raw, rep + 1))
    return summarize(args, model, raw, args.repeats)


def summarize(args, model, raw: dict, repeats: int) -> dict:
    """Medians over the repetitions in ``raw``, speedups, the FLOP ideal and the cost model's prediction."""
    from vdit_accel.cost import CostModel, ideal_speedup

    n_video = args.frames * (args.height // 2) * (args.width // 2)

    def med(pairs, i):
        return statistics.median(p[i] for p in pairs)

    dense_wall, dense_cpu = med(raw["dense"], 0), med(raw["dense"], 1)
    cost_model = CostModel.from_flops(model, n_video, args.text)
    rows = []
    for label in ("fast_path_on", "fast_path_off"):
        w, c = med(raw[label], 0), med(raw[label], 1)
        rows.append(dict(method=label, budget=1.0, wall_s=w, cpu_s=c, wall_vs_dense=w / dense_wall,
                         cpu_vs_dense=c / dense_cpu))
    for name in args.modes:
        for i, b in enumerate(SEQUENCE):
            pairs = [run[i] for run in raw[name]]
            w, c = med(pairs, 0), med(pairs, 1)
            row = dict(method=name, budget=b, wall_s=w, cpu_s=c, wall_vs_dense=w / dense_wall,
                       cpu_vs_dense=c / dense_cpu, speedup_wall=dense_wall / w, speedup_cpu=dense_cpu / c)
            if b > 0:
                ideal = ideal_speedup(model, n_video, b, args.text)
                predicted = 1.0 / cost_model.step_cost(b)
                row.update(flop_ideal=ideal, cost_model_prediction=predicted,
                           fraction_of_ideal_cpu=row["speedup_cpu"] / ideal,
                           fraction_of_prediction_cpu=row["speedup_cpu"] / predicted,
                           fraction_of_prediction_wall=row["speedup_wall"] / predicted)
            rows.append(row)
    return dict(n_video=n_video, n_text=args.text, repeats_done=repeats, dense_wall_s=dense_wall, dense_cpu_s=dense_cpu,
                cost_model=cost_model.to_dict(), rows=rows, raw=raw)


def _x(v) -> str:
    return "—" if v is None else f"{v:.2f}×" if v < 100 else f"{v:.0f}×"


def _s(v: float) -> str:
    return f"{v:.2f} s" if v >= 0.1 else f"{v * 1000:.1f} ms"


def _ratio(v: float) -> str:
    return f"{v:.3f}×" if v >= 0.01 else f"{v:.5f}×"


def _pct(v) -> str:
    return "—" if v is None else f"{v:.0%}"


def markdown(result: dict) -> str:
    cfg, m = result["config"], result["speed"]
    lines = [
        "# Cache modes: time per step on the Wan2.1-1.3B shape", "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['platform']}, {result['machine']['cpus']} CPUs shared with other jobs, torch "
        f"{result['machine']['torch']}, {cfg['threads']} torch thread(s); load average before "
        f"{result['load_before']}, after {result['load_after']}. Wall-clock is disturbed by the other jobs; CPU time "
        f"(process) much less so.  ",
        f"Model: WanTransformer3DModel, shape `{cfg['shape']}`, {cfg['layers']} layers, random fp32 weights; "
        f"{m['n_video']} video tokens, {m['n_text']} text tokens, one CFG branch (`cache_context(\"cond\")`). "
        f"Median of {cfg['repeats']} repetitions, methods interleaved (order rotated per repetition).  ",
        f"Dense step: {m['dense_wall_s']:.2f} s wall, {m['dense_cpu_s']:.2f} s CPU.", "",
        "## Budget 1.0 against plain dense (target ≤ 1.03×)", "",
        "| vdit-accel, schedule [1.0, 1.0, 1.0], 2nd call | wall | CPU | wall / dense | CPU / dense |",
        "|---|---|---|---|---|",
    ]
    for r in m["rows"]:
        if r["method"].startswith("fast_path"):
            label = ("dense_fast_path=True (default)" if r["method"] == "fast_path_on"
                     else f"dense_fast_path=False (cache={cfg.get('fast_path_cache', 'forecast')!r} kept)")
            lines.append(f"| {label} | {_s(r['wall_s'])} | {_s(r['cpu_s'])} | {_ratio(r['wall_vs_dense'])} | "
                         f"{_ratio(r['cpu_vs_dense'])} |")
    lines += [
        "", "## Per cache mode: schedule [1.0, 0.7, 0.5, 0.0], every call timed", "",
        "θ = 1.0 is the first step, computed densely while keeping every cache; θ = 0 is a skipped step (no block "
        "runs, the output is forecast; target ≤ 5 % of dense). Speedup = dense time / this step's time. FLOP ideal: "
        "`ideal_speedup` (blocks only); prediction: `CostModel.from_flops` (FLOPs plus per-block overhead "
        f"{m['cost_model']['details']['selection_overhead']:.3f}); target: measured ≥ 0.9 of the prediction.", "",
        "| mode | θ | wall | CPU | CPU / dense | speedup wall | speedup CPU | FLOP ideal | CPU: of ideal "
        "| prediction | CPU: of prediction | wall: of prediction |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in m["rows"]:
        if r["method"].startswith("fast_path"):
            continue
        lines.append(f"| {r['method']} | {r['budget']} | {_s(r['wall_s'])} | {_s(r['cpu_s'])} | "
                     f"{_ratio(r['cpu_vs_dense'])} | {_x(r['speedup_wall'])} | {_x(r['speedup_cpu'])} | "
                     f"{_x(r.get('flop_ideal'))} | {_pct(r.get('fraction_of_ideal_cpu'))} | "
                     f"{_x(r.get('cost_model_prediction'))} | {_pct(r.get('fraction_of_prediction_cpu'))} | "
                     f"{_pct(r.get('fraction_of_prediction_wall'))} |")
    lines.append("")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=["wan1.3b", "tiny"], default="wan1.3b")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--frames", type=int, default=5, help="latent frames")
    p.add_argument("--height", type=int, default=56, help="latent height (tokens: height/2)")
    p.add_argument("--width", type=int, default=60, help="latent width (tokens: width/2)")
    p.add_argument("--text", type=int, default=512, help="text tokens")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", nargs="+", choices=list(CACHE_MODES), default=list(CACHE_MODES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny shape, 1 layer, 1 repetition: a smoke run in seconds")
    p.add_argument("--out", default=os.path.join(RESULTS, "cache_mode_speed"), help="output path without suffix")
    p.add_argument("--render", metavar="JSON", help="only rewrite the Markdown next to a results JSON of this script")
    args = p.parse_args()
    if args.render:
        with open(args.render) as f:
            md = markdown(json.load(f))
        with open(os.path.splitext(args.render)[0] + ".md", "w") as f:
            f.write(md)
        return print(md)
    if args.quick:
        args.shape, args.layers, args.frames, args.height, args.width, args.text, args.repeats = \
            "tiny", 1, 2, 8, 8, 8, 1
    load_before = [round(x, 2) for x in os.getloadavg()]
    command = " ".join(["python", os.path.relpath(os.path.abspath(__file__)), *sys.argv[1:]])
    write = lambda speed: save(args, command, load_before, speed)  # noqa: E731
    print(markdown(write(measure(args, on_rep=write))))


def save(args, command: str, load_before: list[float], speed: dict) -> dict:
    result = dict(
        benchmark="cache modes: time per step vs dense, CPU",
        command=command,
        machine=dict(platform=platform.platform(), processor=platform.processor(), cpus=os.cpu_count(),
                     torch=torch.__version__),
        config=dict(shape=args.shape, layers=args.layers, frames=args.frames, height=args.height, width=args.width,
                    text=args.text, repeats=speed["repeats_done"], threads=args.threads, sequence=SEQUENCE,
                    fast_path_schedule=FAST_PATH_SCHEDULE, fast_path_cache=FAST_PATH_CACHE),
        load_before=load_before, load_after=[round(x, 2) for x in os.getloadavg()], speed=speed,
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    with open(args.out + ".md", "w") as f:
        f.write(markdown(result))
    return result


if __name__ == "__main__":
    main()
