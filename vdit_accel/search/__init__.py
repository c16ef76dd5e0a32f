"""Per-timestep token budgets found by evolutionary search (DEAP): ``vdit-accel search``.

* :mod:`.cost_model`  time of a transformer step as a function of the budget, calibrated on this machine (or the
  FLOP model), so a target speedup is a real one.
* :mod:`.evaluate`    fitness of candidate schedules: final-latent MSE against the dense output of the same seeds;
  dense references computed once, shared budget prefixes computed once, optional worker processes.
* :mod:`.engine`      the genetic algorithm (repair, uniform + block crossover, decaying mutation) and NSGA-II.
* :mod:`.checkpoint`  a checkpoint per generation, ``--resume``.
* :mod:`vdit_accel.shipped` (in the core) holds the searched schedules shipped for the bundled model.
* the CLI is :mod:`vdit_accel.commands.search`.

Nothing here imports DEAP at import time; only :func:`.engine.run_search` does.
"""

from ..shipped import pipeline_identity, shipped_schedule_for

__all__ = ["pipeline_identity", "shipped_schedule_for"]
