"""torch.compile (inductor) on CPU: compiled accelerated against compiled dense on a Wan2.1-1.3B-shaped transformer.

Real Wan2.1-1.3B widths (12 heads × 128, FFN 8960, text_dim 4096), few layers, random weights, fp32, a few thousand
video tokens and 512 text tokens. Eager first (the reference the compiled run must match), then the same module
compiled in place after ``enable_acceleration``-equivalent hooks: dense, then θ 0.7 / 0.5 / 0.4 on one accelerated
handle (the step advances every call, as in a run). Reports per-call time, speedup over compiled dense, the FLOP ideal
(``vdit_accel.cost``) and its fraction, compile time (first call minus a steady call), the number of compiled graphs,
and wall-clock beside process CPU time (the machine may be shared).

    python benchmarks/compile_cpu.py                       # writes benchmarks/results/compile_cpu.{md,json}
    python benchmarks/compile_cpu.py --layers 1 --frames 2 # quicker
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from types import SimpleNamespace

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gpu_suite  # noqa: E402  (same builders and FLOP ideal as the GPU suite)


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def measure(model, shape, compiled: bool) -> dict:
    """Dense then θ ∈ THETAS on one accelerated handle; wall and CPU seconds per call (median of the timed calls)."""
    from vdit_accel import AccelerationConfig, set_step
    from vdit_accel.api import accelerate_transformer

    kw = gpu_suite.call_inputs(shape, torch.device("cpu"))
    out = {}
    with torch.inference_mode():
        first = timed(lambda: model(**kw))
        runs = [timed(lambda: model(**kw)) for _ in range(shape.repeats)]
        out["dense"] = dict(wall=statistics.median(w for w, _ in runs), cpu=statistics.median(c for _, c in runs),
                            first_wall=first[0], first_cpu=first[1])
        per = 1 + shape.repeats
        schedule = [1.0] + [t for t in gpu_suite.THETAS for _ in range(per)]
        config = AccelerationConfig(schedule=schedule)
        handle = accelerate_transformer(model, config, config.schedule, step_resolver=None)
        try:
            set_step(model, 0, len(schedule))
            with torch.compiler.set_stance("force_eager") if compiled else contextlib.nullcontext():
                model(**kw)  # fills the caches (same dense work; see gpu_suite.time_accelerated)
            step = 0
            for theta in gpu_suite.THETAS:
                runs = []
                for _ in range(per):
                    step += 1
                    set_step(model, step, len(schedule))
                    runs.append(timed(lambda: model(**kw)))
                out[theta] = dict(wall=statistics.median(w for w, _ in runs[1:]),
                                  cpu=statistics.median(c for _, c in runs[1:]), first_wall=runs[0][0],
                                  first_cpu=runs[0][1])
        finally:
            handle.remove()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--frames", type=int, default=5, help="latent frames (tokens = frames × 20 × 20)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    import torch._dynamo
    import torch._dynamo.testing

    shape = SimpleNamespace(model=gpu_suite.WAN13B, layers=args.layers, latent=(1, 16, args.frames, 40, 40), text=512,
                            dtype=torch.float32, repeats=args.repeats)
    n_video, n_text = gpu_suite.token_counts(shape)
    t_build = time.perf_counter()
    model = gpu_suite.build(shape, torch.device("cpu"))
    t_build = time.perf_counter() - t_build
    eager = measure(model, shape, compiled=False)
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    model.compile(backend=counter)
    compiled = measure(model, shape, compiled=True)
    rows = []
    for theta in gpu_suite.THETAS:
        idl = gpu_suite.ideal(model, n_video, n_text, [theta])
        row = dict(theta=theta, ideal=idl)
        for name, res in (("eager", eager), ("compiled", compiled)):
            speed = res["dense"]["wall"] / res[theta]["wall"]
            cpu_speed = res["dense"]["cpu"] / res[theta]["cpu"]
            row[name] = dict(wall=res[theta]["wall"], cpu=res[theta]["cpu"], wall_speedup=speed,
                             cpu_speedup=cpu_speed, fraction_of_ideal_cpu=cpu_speed / idl,
                             first_wall=res[theta]["first_wall"], first_cpu=res[theta]["first_cpu"])
        rows.append(row)
    result = dict(command="python benchmarks/compile_cpu.py " + " ".join(argv or sys.argv[1:]),
                  machine=dict(platform=platform.platform(), torch=torch.__version__, threads=torch.get_num_threads(),
                               cpus=os.cpu_count(),
                               note="Shared machine (other agents' processes ran on the same cores)"),
                  config=f"Wan2.1-1.3B widths, {args.layers} layers, fp32, random weights, {n_video} video + "
                         f"{n_text} text tokens", build_s=t_build, eager_dense=eager["dense"],
                  compiled_dense=compiled["dense"], rows=rows, compiled_graphs=counter.frame_count)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "compile_cpu.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    with open(os.path.join(args.out, "compile_cpu.md"), "w") as f:
        f.write(markdown(result) + "\n")
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    ed, cd = r["eager_dense"], r["compiled_dense"]
    first = r["rows"][0]["compiled"]
    lines = ["# torch.compile (inductor) on CPU: accelerated against dense", "",
             f"{r['config']}. Command: `{r['command'].strip()}`. torch {r['machine']['torch']}, "
             f"{r['machine']['threads']} threads on {r['machine']['cpus']} cores. {r['machine']['note']}: wall-clock "
             "moved with the other processes' load (it is given, but the speedups below are read from process CPU "
             "time, which that load does not inflate). One transformer call per row, median of the timed calls, after "
             "a dense call filled the caches; the FLOP ideal is that of the blocks (`vdit_accel.cost`).", "",
             f"Dense per call: eager {ed['wall']:.2f} s wall / {ed['cpu']:.2f} s CPU; compiled {cd['wall']:.2f} s wall "
             f"/ {cd['cpu']:.2f} s CPU. Compile time (first compiled call minus a steady call): dense "
             f"{cd['first_wall'] - cd['wall']:.0f} s wall / {cd['first_cpu'] - cd['cpu']:.0f} s CPU; accelerated "
             f"(first sparse call, one graph for every budget) {first['first_wall'] - first['wall']:.0f} s wall / "
             f"{first['first_cpu'] - first['cpu']:.0f} s CPU (CPU time of this process only: inductor's C++ compiler "
             f"workers are not counted). Compiled graphs in all: {r['compiled_graphs']}.", "",
             "| θ | FLOP ideal | eager s (wall / CPU) | eager speedup (CPU) | eager fraction of ideal "
             "| compiled s (wall / CPU) | compiled speedup (CPU) | compiled fraction of ideal |",
             "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        e, c = row["eager"], row["compiled"]
        lines.append(f"| {row['theta']} | {row['ideal']:.2f} | {e['wall']:.2f} / {e['cpu']:.2f} | "
                     f"{e['cpu_speedup']:.2f} | {e['cpu_speedup'] / row['ideal']:.2f} | "
                     f"{c['wall']:.2f} / {c['cpu']:.2f} | {c['cpu_speedup']:.2f} | "
                     f"{c['cpu_speedup'] / row['ideal']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
