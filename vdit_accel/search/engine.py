"""The evolutionary search over per-step token budgets, on DEAP.

Genome: one budget per denoising step on a grid (default 0.05) in ``[min_budget, 1]``; step 0 is pinned to 1.0 (the
first call of a run is dense anyway: nothing is cached yet). Two modes:

* ``"ga"`` (Astraea's setting): minimise the final-latent MSE against dense subject to the predicted cost of the
  target speedup. After variation a **repair** operator moves the genome into the cost band
  ``[(1 − tolerance) / target, 1 / target]`` (one grid step at a time on random steps, so it is unbiased).
  Parents: ``population`` (μ); ``offspring`` (λ) children per generation by **uniform** or **block** (two-point)
  crossover and per-step mutation whose probability **decays** geometrically from ``mutation_start`` to
  ``mutation_end``; survivors: the μ best of parents + children (elitist, duplicates dropped first).
* ``"nsga2"``: two objectives (predicted cost, error), no cost constraint, NSGA-II survivor selection
  (:func:`deap.tools.selNSGA2`); the first non-dominated front is the speed/quality Pareto front.

Fitness is memoised by genome. Everything random goes through Python's ``random`` (seeded), so a run is a pure
function of its settings, and a checkpoint (:mod:`.checkpoint`) after every generation makes ``--resume`` continue
exactly where a killed run stopped.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .checkpoint import check_same_search, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .cost_model import CostModel

MODES = ("ga", "nsga2")


@dataclass
class SearchConfig:
    """Settings of one search.

    Args:
        num_steps (`int`): denoising steps (genome length).
        target_speedup (`float`, *optional*): predicted transformer speedup to reach (required for ``"ga"``).
        mode (`str`, defaults to ``"ga"``): ``"ga"`` or ``"nsga2"``.
        population (`int`, defaults to 50): parents kept per generation (μ). Published: 50.
        offspring (`int`, defaults to 30): children per generation (λ). Published: 30.
        generations (`int`, defaults to 30): generations after the initial population. Published: 30.
        grid (`float`, defaults to 0.05): budget step. Coarser is a smaller search space.
        min_budget (`float`, defaults to 0.1): lowest budget of a token-selected step.
        allow_skip (`bool`, defaults to True): a step may also get budget 0 (no block runs; every token takes its
            forecast), so the search explores dense, token-selected and skipped steps together.
        tolerance (`float`, defaults to 0.03): ``"ga"``: the repaired cost lies in
            ``[(1 − tolerance)/target, 1/target]`` (the speedup is at least the target, at most ~3 % above).
        crossover_prob (`float`, defaults to 0.9): chance a child comes from crossover (else a mutated copy).
        block_crossover_prob (`float`, defaults to 0.5): share of crossovers that are block (two-point) crossovers;
            the rest are uniform.
        mutation_start / mutation_end (`float`, defaults to 0.1 / 0.01): per-step mutation probability at the
            first / last generation (geometric decay). Published: 0.1 → 0.01.
        seed (`int`, defaults to 0): seed of the search's random choices.
    """

    num_steps: int
    target_speedup: float | None = None
    mode: str = "ga"
    population: int = 50
    offspring: int = 30
    generations: int = 30
    grid: float = 0.05
    min_budget: float = 0.1
    allow_skip: bool = True
    tolerance: float = 0.03
    crossover_prob: float = 0.9
    block_crossover_prob: float = 0.5
    mutation_start: float = 0.1
    mutation_end: float = 0.01
    seed: int = 0

    def __post_init__(self):
        def need(cond: bool, msg: str):
            if not cond:
                raise ValueError(msg)

        need(self.mode in MODES, f"`mode` must be one of {MODES}, got {self.mode!r}.")
        need(isinstance(self.num_steps, int) and self.num_steps >= 2, f"--steps must be >= 2, got {self.num_steps!r}.")
        if self.mode == "ga":
            need(self.target_speedup is not None, "--target-speedup is required in --mode ga (e.g. 2.0); "
                                                  "--mode nsga2 searches the whole speed/quality front instead.")
        if self.target_speedup is not None:
            need(isinstance(self.target_speedup, (int, float)) and self.target_speedup > 1.0,
                 f"--target-speedup must be > 1.0 (1.0 = dense), got {self.target_speedup!r}.")
        need(isinstance(self.population, int) and self.population >= 2, f"--population must be >= 2, got "
                                                                         f"{self.population!r}.")
        need(isinstance(self.offspring, int) and self.offspring >= 1,
             f"--offspring must be >= 1, got {self.offspring!r}.")
        need(isinstance(self.generations, int) and self.generations >= 0,
             f"--generations must be >= 0, got {self.generations!r}.")
        need(0 < self.grid <= 0.5, f"--grid must be in (0, 0.5], got {self.grid!r}.")
        need(0 <= self.min_budget < 1, f"--min-budget must be in [0, 1), got {self.min_budget!r}.")
        need(0 < self.tolerance < 1, f"--tolerance must be in (0, 1), got {self.tolerance!r}.")
        for name in ("crossover_prob", "block_crossover_prob", "mutation_start", "mutation_end"):
            v = getattr(self, name)
            need(0 <= v <= 1, f"`{name}` must be in [0, 1], got {v!r}.")
        need(self.mutation_end > 0 or self.mutation_start == 0, "`mutation_end` must be > 0 for a geometric decay.")

    @property
    def levels(self) -> list[float]:
        """The budgets a step may take: 0 (skipped, with ``allow_skip``), multiples of ``grid`` from ``min_budget``
        up, and 1.0."""
        k0 = math.ceil(self.min_budget / self.grid - 1e-9)
        out = sorted({round(k * self.grid, 6) for k in range(k0, int(math.floor(1 / self.grid + 1e-9)) + 1)} | {1.0})
        levels = [b for b in out if self.min_budget - 1e-9 <= b <= 1.0 and b > 0]
        return ([0.0] if self.allow_skip else []) + levels

    def mutation_prob(self, generation: int) -> float:
        """Per-step mutation probability at ``generation`` (1-based): geometric decay from start to end."""
        if self.generations <= 1 or self.mutation_start == 0:
            return self.mutation_start
        frac = (generation - 1) / (self.generations - 1)
        return self.mutation_start * (self.mutation_end / self.mutation_start) ** frac

    def search_key(self) -> dict[str, Any]:
        """Settings that define the search (``generations`` may grow on resume)."""
        d = asdict(self)
        d.pop("generations")
        return d


# ------------------------------------------------------------------------------------------------------------
# Operators (plain functions over lists of budgets; DEAP supplies crossover and selection)
# ------------------------------------------------------------------------------------------------------------
def snap(genome: list[float], levels: list[float]) -> None:
    for i, b in enumerate(genome):
        genome[i] = min(levels, key=lambda lv: (abs(lv - b), lv))
    genome[0] = 1.0


def repair(genome: list[float], cfg: SearchConfig, cost: CostModel, rng: random.Random) -> list[float]:
    """Snap to the grid, pin step 0 dense, and (``"ga"``) move the predicted cost into the target band."""
    levels = cfg.levels
    snap(genome, levels)
    if cfg.target_speedup is None or cfg.mode != "ga":
        return genome
    pos = {lv: i for i, lv in enumerate(levels)}
    hi = 1.0 / cfg.target_speedup
    lo = hi * (1.0 - cfg.tolerance)
    while cost.schedule_cost(genome) > hi:
        cand = [i for i in range(1, len(genome)) if pos[genome[i]] > 0]
        if not cand:
            break
        i = rng.choice(cand)
        genome[i] = levels[pos[genome[i]] - 1]
    while cost.schedule_cost(genome) < lo:
        cand = [i for i in range(1, len(genome)) if pos[genome[i]] < len(levels) - 1]
        rng.shuffle(cand)
        for i in cand:
            old = genome[i]
            genome[i] = levels[pos[old] + 1]
            if cost.schedule_cost(genome) <= hi:
                break
            genome[i] = old
        else:
            break  # no single raise stays within the target: the band is narrower than one grid step here
    return genome


def mutate(genome: list[float], levels: list[float], prob: float, rng: random.Random) -> list[float]:
    """Per step with probability ``prob``: half the time move 1–2 grid steps up or down, else draw a new level."""
    pos = {lv: i for i, lv in enumerate(levels)}
    for i in range(1, len(genome)):
        if rng.random() < prob:
            if rng.random() < 0.5:
                j = pos[genome[i]] + rng.choice((-2, -1, 1, 2))
                genome[i] = levels[min(max(j, 0), len(levels) - 1)]
            else:
                genome[i] = rng.choice(levels)
    return genome


def initial_genomes(cfg: SearchConfig, cost: CostModel, rng: random.Random) -> list[list[float]]:
    """μ starting genomes: (ga) the uniform schedule and the dense-warm-up rule at the target, then random ones
    repaired to the target; (nsga2) the same two seeds when a target is given, uniform schedules spread over the
    budget range, then random ones around random mean budgets (so the first front already spans speeds)."""
    from ..schedule import BudgetSchedule

    n, levels = cfg.num_steps, cfg.levels
    out: list[list[float]] = []
    if cfg.mode == "ga":
        out.append([1.0] + [levels[len(levels) // 2]] * (n - 1))  # repaired to a uniform-ish schedule
        try:
            out.append(BudgetSchedule.for_speedup(cfg.target_speedup, skip_steps=cfg.allow_skip).resolve(n, cost))
        except ValueError:
            pass
        while len(out) < cfg.population:
            out.append([1.0] + [rng.choice(levels) for _ in range(n - 1)])
    else:
        if cfg.target_speedup is not None:  # the two GA seeds at the target, so the front starts with them
            import dataclasses

            ga = dataclasses.replace(cfg, mode="ga")
            out.append(repair([1.0] + [levels[len(levels) // 2]] * (n - 1), ga, cost, rng))
            try:
                out.append(repair(BudgetSchedule.for_speedup(cfg.target_speedup, skip_steps=cfg.allow_skip)
                                  .resolve(n, cost), ga, cost, rng))
            except ValueError:
                pass
        for k in range(min(cfg.population // 2, len(levels))):
            lv = levels[round(k * (len(levels) - 1) / max(1, min(cfg.population // 2, len(levels)) - 1))]
            out.append([1.0] + [lv] * (n - 1))
        while len(out) < cfg.population:
            m = rng.randrange(len(levels))
            out.append([1.0] + [levels[min(max(m + rng.randint(-3, 3), 0), len(levels) - 1)] for _ in range(n - 1)])
    return [repair(list(g), cfg, cost, rng) for g in out[:cfg.population]]


# ------------------------------------------------------------------------------------------------------------
# The search loop
# ------------------------------------------------------------------------------------------------------------
@dataclass
class SearchResult:
    best: list[float]
    best_error: float
    best_speedup: float
    population: list[tuple[list[float], tuple[float, ...]]]
    front: list[dict[str, Any]]
    logbook: list[dict[str, Any]]
    evaluations: int
    stats: dict[str, int]
    elapsed_seconds: float
    generations: int
    resumed_from: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _deap():
    try:
        from deap import base, creator, tools
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("`vdit-accel search` needs DEAP: pip install 'vdit-accel[search]' (or pip install deap)."
                          ) from e
    if not hasattr(creator, "VditFitnessMin"):
        creator.create("VditFitnessMin", base.Fitness, weights=(-1.0,))
        creator.create("VditFitnessPareto", base.Fitness, weights=(-1.0, -1.0))
        creator.create("VditIndividual", list, fitness=creator.VditFitnessMin)
        creator.create("VditParetoIndividual", list, fitness=creator.VditFitnessPareto)
    return base, creator, tools


def run_search(cfg: SearchConfig, evaluate: Callable[[list[list[float]]], list[float]], cost: CostModel,
               checkpoint_path: str, *, references_hash: str = "", run_key: dict[str, Any] | None = None,
               resume: bool = False, progress: bool = True, stop_after_generation: int | None = None,
               eval_stats: Callable[[], dict[str, int]] | None = None) -> SearchResult:
    """Run (or resume) the search; writes ``checkpoint_path`` after every generation.

    Args:
        evaluate: maps a list of genomes to their errors (an :class:`~.evaluate.Evaluator`'s ``evaluate``).
        references_hash: hash of the dense references; a resumed run must see the same.
        run_key: other settings that must match on resume (model, prompts, seeds, resolution, ...).
        stop_after_generation: debugging/crash test: exit the process hard (``os._exit(3)``) right after the
            checkpoint of that generation is written, as a kill would.
    """
    base, creator, tools = _deap()
    from tqdm.auto import tqdm

    Ind = creator.VditIndividual if cfg.mode == "ga" else creator.VditParetoIndividual
    key = {"search": cfg.search_key(), "references_hash": references_hash, "run": run_key or {},
           "cost_model": cost.to_dict()}
    memo: dict[tuple[float, ...], float] = {}
    logbook: list[dict[str, Any]] = []
    elapsed_before = 0.0
    stats_before = dict(candidates=0, transformer_steps=0, naive_steps=0)
    resumed_from = None
    if resume:
        ck = load_checkpoint(checkpoint_path)
        check_same_search(ck["key"]["search"], key["search"], checkpoint_path)
        check_same_search(ck["key"]["run"], key["run"], checkpoint_path)
        if ck["key"]["references_hash"] != key["references_hash"]:
            raise ValueError(f"--resume: the dense references differ from those of the checkpoint {checkpoint_path!r} "
                             f"(different model weights, dtype, device or settings). Resume on the same setup, or "
                             f"start a new search without --resume.")
        check_same_search({"cost_model": ck["key"]["cost_model"]}, {"cost_model": key["cost_model"]}, checkpoint_path)
        set_rng_state(ck["rng"])
        memo = {tuple(g): e for g, e in ck["memo"]}
        logbook = list(ck["logbook"])
        elapsed_before = ck["elapsed_seconds"]
        stats_before = dict(ck["stats"])
        gen = ck["generation"]
        resumed_from = gen
        pop = []
        for genome, values in ck["population"]:
            ind = Ind(genome)
            ind.fitness.values = tuple(values)
            pop.append(ind)
    else:
        random.seed(cfg.seed)
        import numpy as np
        import torch

        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        gen = -1
        pop = []
    rng = random  # the module-level generator, which DEAP's operators use too; its state is checkpointed
    t_start = time.perf_counter()

    def fitness_of(genome: list[float]) -> tuple[float, ...]:
        err = memo[tuple(genome)]
        return (err,) if cfg.mode == "ga" else (cost.schedule_cost(genome), err)

    def evaluate_all(inds: list) -> int:
        todo = list(dict.fromkeys(tuple(i) for i in inds if tuple(i) not in memo))
        if todo:
            for g, e in zip(todo, evaluate([list(g) for g in todo])):
                memo[g] = float(e)
        for ind in inds:
            ind.fitness.values = fitness_of(list(ind))
        return len(todo)

    def best_of(population) -> Any:
        return min(population, key=lambda i: (memo[tuple(i)], cost.schedule_cost(i), tuple(i)))

    def checkpoint(generation: int) -> None:
        stats = _merged_stats(stats_before, eval_stats)
        save_checkpoint(checkpoint_path, dict(
            key=key, generation=generation, population=[(list(i), tuple(i.fitness.values)) for i in pop],
            memo=[(list(g), e) for g, e in memo.items()], logbook=logbook, rng=rng_state(),
            elapsed_seconds=elapsed_before + time.perf_counter() - t_start, stats=stats,
            target_generations=cfg.generations))

    def log(generation: int, n_evals: int, mut: float | None) -> dict[str, Any]:
        b = best_of(pop) if cfg.mode == "ga" else _pick_from_front(pop, memo, cost, cfg.target_speedup)
        errs = sorted(memo[tuple(i)] for i in pop)
        rec = dict(generation=generation, evaluations=n_evals, best_error=memo[tuple(b)],
                   best_speedup=cost.speedup(b), median_error=errs[len(errs) // 2], mutation_prob=mut,
                   elapsed_seconds=round(elapsed_before + time.perf_counter() - t_start, 3))
        if cfg.mode == "nsga2":
            rec["front_size"] = len(pareto_front(pop, memo, cost))
        logbook.append(rec)
        return rec

    def postfix(rec: dict[str, Any]) -> None:
        extra = {"front": rec["front_size"]} if "front_size" in rec else {}
        bar.set_postfix(best_err=f"{rec['best_error']:.3g}", speedup=f"{rec['best_speedup']:.2f}x", **extra)

    def stop_if_asked(generation: int) -> None:
        if stop_after_generation is not None and generation == stop_after_generation:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(3)  # simulate a crash: no cleanup, no final file

    bar = tqdm(total=cfg.generations + 1, initial=gen + 1, desc=f"search[{cfg.mode}]", disable=not progress,
               unit="gen", dynamic_ncols=True)
    try:
        if gen < 0:
            pop = [Ind(g) for g in initial_genomes(cfg, cost, rng)]
            n = evaluate_all(pop)
            gen = 0
            rec = log(0, n, None)
            checkpoint(0)
            bar.update(1)
            postfix(rec)
            stop_if_asked(0)
        while gen < cfg.generations:
            g = gen + 1
            p_mut = cfg.mutation_prob(g)
            offspring = []
            for _ in range(cfg.offspring):
                if rng.random() < cfg.crossover_prob:
                    a, b = (Ind(list(x)) for x in rng.sample(pop, 2))
                    if rng.random() < cfg.block_crossover_prob:
                        tools.cxTwoPoint(a, b)
                    else:
                        tools.cxUniform(a, b, indpb=0.5)
                    child = a
                else:
                    child = Ind(list(rng.choice(pop)))
                mutate(child, cfg.levels, p_mut, rng)
                repair(child, cfg, cost, rng)
                offspring.append(child)
            n = evaluate_all(offspring)
            pool = list({tuple(i): i for i in pop + offspring}.values())  # drop duplicates (first one kept)
            if len(pool) < cfg.population:
                pool += [i for i in pop + offspring if all(i is not p for p in pool)][:cfg.population - len(pool)]
            if cfg.mode == "ga":
                pop = sorted(pool, key=lambda i: (memo[tuple(i)], tuple(i)))[:cfg.population]
            else:
                pop = tools.selNSGA2(pool, cfg.population)
            gen = g
            rec = log(g, n, p_mut)
            checkpoint(g)
            bar.update(1)
            postfix(rec)
            stop_if_asked(g)
    finally:
        bar.close()

    best = best_of(pop) if cfg.mode == "ga" else _pick_from_front(pop, memo, cost, cfg.target_speedup)
    front = pareto_front(pop, memo, cost) if cfg.mode == "nsga2" else []
    return SearchResult(
        best=list(best), best_error=memo[tuple(best)], best_speedup=cost.speedup(best),
        population=[(list(i), tuple(i.fitness.values)) for i in pop], front=front, logbook=logbook,
        evaluations=len(memo), stats=_merged_stats(stats_before, eval_stats),
        elapsed_seconds=elapsed_before + time.perf_counter() - t_start, generations=gen, resumed_from=resumed_from,
        extra=dict(evaluated=[(list(g), cost.schedule_cost(list(g)), e) for g, e in memo.items()]))


def _merged_stats(before: dict[str, int], current: Callable[[], dict[str, int]] | None) -> dict[str, int]:
    now = current() if current is not None else {}
    return {k: before.get(k, 0) + now.get(k, 0) for k in set(before) | set(now)}


def pareto_front(pop, memo, cost: CostModel) -> list[dict[str, Any]]:
    """Non-dominated (cost, error) points of ``pop``, fastest first, duplicates dropped."""
    pts = {tuple(i): (cost.schedule_cost(i), memo[tuple(i)]) for i in pop}
    front = [g for g, (c, e) in pts.items()
             if not any((c2 <= c and e2 <= e) and (c2 < c or e2 < e) for c2, e2 in pts.values())]
    front.sort(key=lambda g: (pts[g][0], pts[g][1]))
    return [dict(budgets=list(g), predicted_cost=pts[g][0], predicted_speedup=1.0 / pts[g][0], error=pts[g][1])
            for g in front]


def _pick_from_front(pop, memo, cost: CostModel, target: float | None):
    """NSGA-II: the lowest-error member reaching the target speedup (or the lowest-error member when no target)."""
    ok = [i for i in pop if target is None or cost.speedup(i) >= target * (1 - 1e-9)]
    if not ok:
        ok = [max(pop, key=lambda i: cost.speedup(i))]
    return min(ok, key=lambda i: (memo[tuple(i)], cost.schedule_cost(i), tuple(i)))
