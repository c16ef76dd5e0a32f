"""The command-line side of context parallelism: ``vdit-accel generate --parallel`` under ``torchrun``."""

from __future__ import annotations

from typing import Callable

import torch.distributed as dist
from diffusers import ContextParallelConfig

from ..parallel import enable_parallelism, init_distributed, is_main_process, parse_parallel, run_guarded


class CliParallelSetup:
    """What ``vdit-accel generate --parallel`` calls once the pipeline is loaded: enables parallelism, returns whether
    this rank writes the outputs (rank 0). ``info`` goes into the report."""

    def __init__(self, config: ContextParallelConfig, world: int):
        self.config = config
        self.info = dict(ulysses_degree=config.ulysses_degree, ring_degree=config.ring_degree, world_size=world)

    def __call__(self, pipe) -> bool:
        enable_parallelism(pipe, self.config)
        return is_main_process()


def run_cli(args, fn: Callable) -> int:
    """Run a CLI command body ``fn(args, setup)`` on every rank of a ``torchrun`` job: initialise the process group,
    check ``--parallel`` against the world size before anything is loaded, put each rank on its own GPU, and end every
    rank with an error (never a hang) when one fails (:func:`run_guarded`)."""

    def body() -> int:
        _, world, device = init_distributed()
        config = parse_parallel(args.parallel, world)
        if getattr(args, "reuse", False):
            raise ValueError("--reuse (attention-score reuse) works on the whole token grid and is not supported with "
                             "--parallel; drop one of the two.")
        if device.type == "cuda":
            args.device = str(device)
        elif str(args.device).startswith("cuda"):
            raise ValueError(f"--device {args.device} but CUDA is not available; use --device cpu (gloo).")
        code = fn(args, CliParallelSetup(config, world))
        dist.destroy_process_group()
        return code

    return run_guarded(body, exit_code=2)
