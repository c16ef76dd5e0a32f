"""``vdit-accel search``: per-step token budgets found by evolutionary search (DEAP).

    vdit-accel search --model default --target-speedup 2.0 --prompts prompts.txt --steps 20 \\
        [--population 50] [--generations 30] [--mode ga|nsga2] [--workers N] [--out schedule.json] [--resume]

Writes the schedule (``--out``, loadable with ``pipe.enable_acceleration(schedule="schedule.json")``), a JSON report
(``<out>.report.json``: cost model, per-generation log, evaluation counts, wall-clock, held-out comparison) and, in
``--mode nsga2``, the Pareto front (``pareto.json`` and ``pareto.png`` next to ``--out``). A checkpoint
(``<out>.ckpt``) is written after every generation; ``--resume`` continues from it.

DEAP is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

HELP = ("Search per-step token budgets with an evolutionary algorithm (DEAP) for a target speedup, or the whole "
        "speed/quality Pareto front (--mode nsga2); writes a schedule JSON for enable_acceleration(schedule=...).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .generate import add_model_arguments

    add_model_arguments(p)
    p.add_argument("--prompts", required=True, help="text file, one prompt per line ('#' comments and blank lines "
                                                    "ignored), or a JSON list of prompts; Astraea uses 4")
    p.add_argument("--target-speedup", type=float, default=None,
                   help="predicted transformer speedup to reach (under --cost-model), e.g. 2.0; required for "
                        "--mode ga")
    p.add_argument("--steps", type=int, default=None, help="num_inference_steps (default: the model's default)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--frames", type=int, default=None, help="num_frames")
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--max-sequence-length", type=int, default=None, help="text tokens (default: the model's)")
    p.add_argument("--noise-seed", type=int, default=0, help="prompt i is generated with seed noise-seed + i")
    p.add_argument("--mode", choices=["ga", "nsga2"], default="ga",
                   help="ga: best error at the target speedup (Astraea); nsga2: the whole speed/quality front")
    p.add_argument("--population", type=int, default=50, help="parents per generation (μ)")
    p.add_argument("--offspring", type=int, default=30, help="children per generation (λ)")
    p.add_argument("--generations", type=int, default=30)
    p.add_argument("--grid", type=float, default=0.05, help="budget step of the genome")
    p.add_argument("--min-budget", type=float, default=0.1, help="lowest budget of a token-selected step")
    p.add_argument("--no-skip", action="store_true",
                   help="do not let steps take budget 0 (skipped: no block runs, every token takes its forecast)")
    p.add_argument("--tolerance", type=float, default=0.03,
                   help="ga: the repaired predicted cost lies in [(1-tol)/target, 1/target]")
    p.add_argument("--mutation", type=float, nargs=2, default=(0.1, 0.01), metavar=("START", "END"),
                   help="per-step mutation probability, decaying geometrically from START to END")
    p.add_argument("--seed", type=int, default=0, help="seed of the search")
    p.add_argument("--cost-model", default="calibrate",
                   help="'calibrate' (time the transformer on this machine), 'flops' (computed FLOP model), or a "
                        "JSON file (a cost model, or a schedule written by this command)")
    p.add_argument("--workers", type=int, default=1, help="evaluation processes (each loads the pipeline; CUDA "
                                                         "devices are assigned round-robin)")
    p.add_argument("--threads-per-worker", type=int, default=1)
    p.add_argument("--no-prefix-sharing", action="store_true",
                   help="evaluate every candidate from step 0 (for measuring what prefix sharing saves)")
    p.add_argument("--holdout-prompts", default=None,
                   help="prompts to compare the searched schedule with the uniform one of the same predicted cost")
    p.add_argument("--calibrate-only", action="store_true",
                   help="only calibrate the cost model on this machine and write it to --out (reuse it with "
                        "--cost-model FILE, so several searches share one calibration)")
    p.add_argument("--out", default="schedule.json", help="schedule JSON to write")
    p.add_argument("--pareto-dir", default=None, help="--mode nsga2: where pareto.json and pareto.png go "
                                                     "(default: the folder of --out)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: <out>.ckpt)")
    p.add_argument("--report", default=None, help="JSON report (default: <out>.report.json)")
    p.add_argument("--resume", action="store_true", help="continue the search from --checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--stop-after-generation", type=int, default=None, help=argparse.SUPPRESS)


def read_prompts(path: str, flag: str = "--prompts") -> list[str]:
    from .prompts import read_prompt_file

    return read_prompt_file(path, flag)


def _stem(path: str) -> str:
    return path[:-5] if path.endswith(".json") else path


def _generation_defaults(model: str) -> dict[str, Any]:
    from .loading import TINY_MODELS

    if model in (None, "", "default"):
        from ..tiny_model import DEFAULT_GENERATION_KWARGS

        return dict(DEFAULT_GENERATION_KWARGS)
    if model in TINY_MODELS:
        return dict(height=64, width=64, num_frames=17, num_inference_steps=10, guidance_scale=6.0,
                    max_sequence_length=16)
    return {}


def build_run_spec(args, prompts: list[str], seed_offset: int = 0):
    from ..search.evaluate import RunSpec

    d = _generation_defaults(args.model)
    pick = lambda v, k: v if v is not None else d.get(k)  # noqa: E731
    steps = pick(args.steps, "num_inference_steps") or 50
    return RunSpec(prompts=prompts, seeds=[args.noise_seed + seed_offset + i for i in range(len(prompts))],
                   num_inference_steps=steps, height=pick(args.height, "height"), width=pick(args.width, "width"),
                   num_frames=pick(args.frames, "num_frames"),
                   guidance_scale=pick(args.guidance_scale, "guidance_scale"),
                   max_sequence_length=pick(args.max_sequence_length, "max_sequence_length"))


def transformer_inputs(evaluator) -> dict[str, Any]:
    """One transformer call's inputs at the search's settings (prompt 0, first timestep) for calibration."""
    import torch

    from ..search.evaluate import supports_prefix_sharing

    pipe = evaluator.pipe
    if supports_prefix_sharing(pipe):
        inp = evaluator._prepare(0)
        pipe.scheduler.set_timesteps(evaluator.spec.num_inference_steps, device=pipe._execution_device)
        t = pipe.scheduler.timesteps[0]
        return dict(hidden_states=inp["latents"].to(pipe.transformer.dtype), timestep=t.expand(1),
                    encoder_hidden_states=inp["prompt_embeds"])
    raise RuntimeError(f"Calibration needs a Wan-family text-to-video pipeline, got {type(pipe).__name__}; pass "
                       f"--cost-model flops or a cost-model JSON file.")


def uniform_at_cost(cost, num_steps: int, target_cost: float) -> list[float]:
    """The uniform schedule ``[b] * n`` (b continuous, > 0: token-selected steps) whose predicted cost equals
    ``target_cost``."""
    lo, hi = 1e-4, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if cost.schedule_cost([mid] * num_steps) > target_cost:
            hi = mid
        else:
            lo = mid
    return [round(lo, 6)] * num_steps


def versions() -> dict[str, str]:
    import diffusers
    import torch

    out = dict(python=platform.python_version(), torch=torch.__version__, diffusers=diffusers.__version__)
    try:
        from importlib.metadata import version

        out["vdit_accel"] = version("vdit-accel")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        out["vdit_accel"] = "unknown"
    try:
        import deap

        out["deap"] = deap.__version__
    except ImportError:
        pass
    return out


def require_deap() -> None:
    """Raise a clear error when DEAP (the search's genetic-algorithm library) is not installed."""
    import importlib.util

    if importlib.util.find_spec("deap") is None:
        raise RuntimeError("`vdit-accel search` needs DEAP: pip install 'vdit-accel[search]' (or pip install deap).")


def run(args) -> int:
    import torch

    from ..search.checkpoint import load_checkpoint
    from ..search.cost_model import CostModel, calibrate
    from ..search.engine import SearchConfig, run_search

    # ---------------------------------------------------------------- every check before any work
    prompts = read_prompts(args.prompts)
    holdout = read_prompts(args.holdout_prompts, "--holdout-prompts") if args.holdout_prompts else None
    spec = build_run_spec(args, prompts)
    cfg = SearchConfig(num_steps=spec.num_inference_steps, target_speedup=args.target_speedup,
                       mode="nsga2" if args.calibrate_only else args.mode,  # calibration needs no target
                       population=args.population, offspring=args.offspring, generations=args.generations,
                       grid=args.grid, min_budget=args.min_budget, allow_skip=not args.no_skip, tolerance=args.tolerance,
                       mutation_start=args.mutation[0], mutation_end=args.mutation[1], seed=args.seed)
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}.")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"--out {args.out!r}: folder {out_dir!r} does not exist.")
    ckpt_path = args.checkpoint or _stem(args.out) + ".ckpt"
    report_path = args.report or _stem(args.out) + ".report.json"
    saved = load_checkpoint(ckpt_path) if args.resume else None
    if saved is not None:  # settings that need no model: refuse a mismatched resume before loading anything
        from ..search.checkpoint import check_same_search

        check_same_search(saved["key"]["search"], cfg.search_key(), ckpt_path)
        check_same_search(saved["key"]["run"], _run_key(spec, args, model_id=None), ckpt_path)
    file_cost = None
    if saved is None and args.cost_model not in ("calibrate", "flops"):
        file_cost = CostModel.load(args.cost_model)
    require_deap()  # DEAP missing: say so now, before the model loads
    if saved is None and os.path.exists(ckpt_path):
        print(f"[vdit-accel search] starting a new search; the old checkpoint {ckpt_path} will be overwritten "
              f"(use --resume to continue it)", file=sys.stderr)

    # ---------------------------------------------------------------- model, references, cost model
    from ..search.evaluate import Evaluator, LoadSpec, ParallelEvaluator, references_hash, supports_prefix_sharing
    from ..shipped import pipeline_identity
    from .loading import load_pipeline

    t0 = time.perf_counter()
    pipe = load_pipeline(args.model, getattr(torch, args.dtype), args.device)
    model_id = pipeline_identity(pipe) or args.model
    evaluator = Evaluator(pipe, spec, prefix_sharing=not args.no_prefix_sharing)
    ref_hash = references_hash(evaluator.references)
    t_refs = time.perf_counter() - t0
    if saved is not None:
        cost = CostModel.from_dict(saved["key"]["cost_model"])
    elif file_cost is not None:
        cost = file_cost
    elif args.cost_model == "flops":
        cost = flops_cost(pipe.transformer, transformer_inputs(evaluator))
    else:
        print("[vdit-accel search] calibrating the cost model (timing the transformer at several budgets)...")
        lowest = min(b for b in cfg.levels if b > 0)  # budget 0 (a skipped step) is timed separately
        points = sorted({lowest, 0.25, 0.5, 0.75, 1.0})
        cost = calibrate(pipe.transformer, transformer_inputs(evaluator), budgets=points)
    print(f"[vdit-accel search] cost model ({cost.source}): skipped step: {cost.skip_cost:.3f}, " +
          ", ".join(f"θ={b:g}: {c:.3f}" for b, c in zip(cost.budgets, cost.costs)))
    if args.calibrate_only:
        cost.details.update(model=model_id, height=spec.height, width=spec.width, num_frames=spec.num_frames)
        cost.save(args.out)
        print(f"[vdit-accel search] wrote the cost model to {args.out}; use it with --cost-model {args.out}")
        return 0
    if cfg.target_speedup is not None:
        top = cost.max_speedup(cfg.num_steps, cfg.levels[0])
        if top < cfg.target_speedup:
            raise ValueError(
                f"--target-speedup {cfg.target_speedup} is out of reach: with {cfg.num_steps} steps, step 0 dense and "
                f"every other step at --min-budget {cfg.min_budget}, the {cost.source} cost model predicts at most "
                f"{top:.2f}x on this machine. Lower the target, raise --steps or lower --min-budget"
                + (", or search against the computed FLOP model (--cost-model flops): small models on a CPU are "
                   "dominated by work that token selection does not remove." if cost.source == "calibrated" else "."))

    run_key = _run_key(spec, args, model_id)
    if args.workers > 1:
        par = ParallelEvaluator(LoadSpec(args.model, args.dtype, args.device, args.threads_per_worker), spec,
                                evaluator.token_selection, evaluator.references, args.workers,
                                prefix_sharing=not args.no_prefix_sharing)
        evaluate = par.evaluate
    else:
        par = None
        evaluate = evaluator.evaluate

    # ---------------------------------------------------------------- search
    try:
        result = run_search(cfg, evaluate, cost, ckpt_path, references_hash=ref_hash, run_key=run_key,
                            resume=args.resume, progress=not args.no_progress,
                            stop_after_generation=args.stop_after_generation,
                            eval_stats=lambda: (par.stats if par else evaluator.stats).as_dict())
    finally:
        if par is not None:
            par.close()

    # ---------------------------------------------------------------- outputs
    from ..schedule import BudgetSchedule

    flops = flops_cost(pipe.transformer, transformer_inputs(evaluator)) if supports_prefix_sharing(pipe) else None
    grid = None
    if supports_prefix_sharing(pipe):  # the latent token grid (F', H', W') the accelerated transformer sees
        x, pt = transformer_inputs(evaluator)["hidden_states"], pipe.transformer.config.patch_size
        grid = [x.shape[2] // pt[0], x.shape[3] // pt[1], x.shape[4] // pt[2]]
    meta = dict(model=model_id, height=spec.height, width=spec.width, num_frames=spec.num_frames, grid=grid,
                steps=spec.num_inference_steps, guidance_scale=spec.guidance_scale,
                max_sequence_length=spec.max_sequence_length,
                target_speedup=cfg.target_speedup, predicted_speedup=round(result.best_speedup, 4),
                predicted_speedup_flops=round(flops.speedup(result.best), 4) if flops else None,
                fitness=dict(metric="final-latent MSE vs dense, mean over prompts", value=result.best_error,
                             prompts=spec.prompts, seeds=spec.seeds),
                cost_model=cost.to_dict(),
                search=dict(mode=cfg.mode, population=cfg.population, offspring=cfg.offspring,
                            generations=result.generations, grid=cfg.grid, min_budget=cfg.min_budget, seed=cfg.seed,
                            evaluations=result.evaluations, elapsed_seconds=round(result.elapsed_seconds, 2)),
                versions=versions())
    BudgetSchedule(budgets=result.best, metadata=meta).save(args.out)
    report: dict[str, Any] = dict(
        command=" ".join(["vdit-accel", "search"] + sys.argv[2:]) if sys.argv[1:2] == ["search"] else None,
        schedule=result.best, error=result.best_error, predicted_speedup=result.best_speedup,
        predicted_speedup_flops=flops.speedup(result.best) if flops else None,
        evaluations=result.evaluations, generations=result.generations, resumed_from=result.resumed_from,
        search_seconds=result.elapsed_seconds, reference_seconds=t_refs, stats=result.stats,
        machine=dict(platform=platform.platform(), processor=platform.processor(), cpus=os.cpu_count(),
                     torch_threads=torch.get_num_threads(), device=args.device, workers=args.workers),
        cost_model=cost.to_dict(), logbook=result.logbook, config=cfg.search_key() | dict(generations=cfg.generations),
        run=run_key, versions=versions())
    if cfg.mode == "nsga2":
        pareto_dir = args.pareto_dir or out_dir
        os.makedirs(pareto_dir, exist_ok=True)
        report["pareto"] = _write_pareto(result, evaluator, cost, spec, model_id, pareto_dir)
    if holdout:
        report["holdout"] = holdout_comparison(pipe, build_run_spec(args, holdout, seed_offset=1000), evaluator,
                                               cost, result.best)
        h = report["holdout"]
        print(f"[vdit-accel search] held-out ({len(holdout)} prompts): searched MSE {h['searched']['error']:.4g} vs "
              f"uniform of the same predicted cost {h['uniform']['error']:.4g}")
    with open(report_path, "w") as f:
        json.dump(report, f, indent=2, default=float)
    s = result.stats
    print(f"[vdit-accel search] best: predicted speedup {result.best_speedup:.2f}x, error {result.best_error:.4g}, "
          f"{result.evaluations} candidates, {s.get('transformer_steps', 0)} denoising steps run "
          f"({s.get('naive_steps', 0)} without prefix sharing), {result.elapsed_seconds:.1f}s")
    print(f"[vdit-accel search] wrote {args.out}, {report_path}")
    return 0


def _run_key(spec, args, model_id: str | None) -> dict[str, Any]:
    """Settings of the generations a search is scored on; a resumed search must have the same."""
    key = dict(prompts=spec.prompts, seeds=spec.seeds, steps=spec.num_inference_steps, height=spec.height,
               width=spec.width, num_frames=spec.num_frames, guidance_scale=spec.guidance_scale,
               max_sequence_length=spec.max_sequence_length, dtype=args.dtype)
    if model_id is not None:
        key["model"] = model_id
    return key


def flops_cost(transformer, inputs):
    from ..search.cost_model import CostModel

    x = inputs["hidden_states"]
    p = transformer.config.patch_size
    n_video = (x.shape[2] // p[0]) * (x.shape[3] // p[1]) * (x.shape[4] // p[2])
    return CostModel.from_flops(transformer, n_video, inputs["encoder_hidden_states"].shape[1])


def holdout_comparison(pipe, spec, evaluator, cost, best: list[float]) -> dict[str, Any]:
    """Errors on held-out prompts: the searched schedule, the uniform schedule of the same predicted cost and the
    library's default rule."""
    from ..schedule import BudgetSchedule
    from ..search.evaluate import Evaluator

    ev = Evaluator(pipe, spec, evaluator.token_selection, prefix_sharing=evaluator.prefix_sharing)
    n = spec.num_inference_steps
    uniform = uniform_at_cost(cost, n, cost.schedule_cost(best))
    default = BudgetSchedule.default().resolve(n)
    errs = ev.evaluate([best, uniform, default])
    row = lambda b, e: dict(budgets=b, error=e, predicted_speedup=cost.speedup(b))  # noqa: E731
    return dict(prompts=spec.prompts, seeds=spec.seeds, searched=row(best, errs[0]), uniform=row(uniform, errs[1]),
                default_rule=row(default, errs[2]))


def _write_pareto(result, evaluator, cost, spec, model_id: str, out_dir: str) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = spec.num_inference_steps
    front = result.front
    # the uniform schedules at the front's costs, for reference (a few extra evaluations)
    uniforms = [uniform_at_cost(cost, n, f["predicted_cost"]) for f in front[:: max(1, len(front) // 6)]]
    u_err = evaluator.evaluate(uniforms) if uniforms else []
    data = dict(front=front, uniform=[dict(budgets=u, predicted_speedup=cost.speedup(u), error=e)
                                      for u, e in zip(uniforms, u_err)],
                evaluated=[dict(predicted_speedup=1 / c, error=e) for _, c, e in result.extra["evaluated"]],
                cost_model=cost.source)
    json_path = os.path.join(out_dir, "pareto.json")
    with open(json_path, "w") as f:
        json.dump(data, f, indent=2, default=float)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    # error 0 (all-dense schedules) cannot sit on a log axis; they are in pareto.json
    pos = lambda rows: [d for d in rows if d["error"] > 0]  # noqa: E731
    ev, fr, un = pos(data["evaluated"]), pos(front), pos(data["uniform"])
    ax.scatter([d["predicted_speedup"] for d in ev], [d["error"] for d in ev], s=6, c="0.75",
               label=f"evaluated ({len(data['evaluated'])})")
    ax.plot([d["predicted_speedup"] for d in fr], [d["error"] for d in fr], "o-", c="C0", ms=4,
            label=f"Pareto front ({len(front)})")
    if un:
        ax.plot([d["predicted_speedup"] for d in un], [d["error"] for d in un], "s--", c="C3", ms=4,
                label="uniform budget, same cost")
    ax.set_yscale("log")
    ax.set_xlabel(f"predicted transformer speedup ({cost.source} cost model)")
    ax.set_ylabel("final-latent MSE vs dense")
    ax.set_title(f"{model_id}: {n} steps, {len(spec.prompts)} prompts, NSGA-II", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png_path = os.path.join(out_dir, "pareto.png")
    fig.savefig(png_path)
    plt.close(fig)
    data.update(json=json_path, png=png_path)
    return dict(json=json_path, png=png_path, size=len(front))
