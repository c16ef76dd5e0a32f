"""Process-group set-up for context parallelism: parsing ``--parallel``, ``torchrun`` initialisation, and ending every
rank with an error (never a hang) when one fails."""

from __future__ import annotations

import os
import sys
import traceback
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig

PARALLEL_HELP = ("context parallelism under torchrun: 'ulysses' or 'ring' (degree = world size), or "
                 "'ulysses=U,ring=R' with U·R = world size")


def parse_parallel(spec: str | ContextParallelConfig, world_size: int | None = None) -> ContextParallelConfig:
    """``"ulysses"`` / ``"ring"`` (degree = world size), ``"ulysses=2,ring=2"``, ``"ulysses=2"`` → a
    :class:`diffusers.ContextParallelConfig`. With ``world_size``, the degrees must multiply to it."""
    if isinstance(spec, ContextParallelConfig):
        cfg = spec
        u, r = cfg.ulysses_degree, cfg.ring_degree
    else:
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(f"--parallel must be 'ulysses', 'ring' or 'ulysses=U,ring=R', got {spec!r}.")
        text = spec.strip().lower().replace(" ", "")
        degrees = {"ulysses": 1, "ring": 1}
        if text in degrees:
            if world_size is None:
                raise ValueError(f"--parallel {text!r} takes its degree from the world size; start the processes "
                                 f"with torchrun, or write '{text}=N'.")
            degrees[text] = world_size
        else:
            seen = set()
            for part in text.split(","):
                key, sep, value = part.partition("=")
                if key not in degrees or not sep or not value.isdigit() or int(value) < 1 or key in seen:
                    raise ValueError(f"--parallel: cannot parse {part!r} in {spec!r}; use 'ulysses', 'ring' or "
                                     f"'ulysses=U,ring=R' with positive integers (e.g. 'ulysses=2,ring=2').")
                seen.add(key)
                degrees[key] = int(value)
        u, r = degrees["ulysses"], degrees["ring"]
        if u * r == 1:
            raise ValueError(f"--parallel {spec!r} asks for one rank. Start N processes with "
                             f"`torchrun --nproc-per-node N` and use a degree > 1.")
        cfg = ContextParallelConfig(ulysses_degree=u, ring_degree=r)
    if cfg.ulysses_anything or cfg.ring_anything:
        raise ValueError("ulysses_anything / ring_anything (uneven shards) are not supported by vdit-accel: token "
                         "selection keeps the same count on every rank, which needs equal shards.")
    if world_size is not None and u * r != world_size:
        raise ValueError(f"--parallel {spec!r}: ulysses ({u}) × ring ({r}) = {u * r} must equal the number of "
                         f"processes ({world_size}); e.g. torchrun --nproc-per-node {u * r}.")
    return cfg


def init_distributed(timeout_s: float = 120.0) -> tuple[int, int, torch.device]:
    """Initialise ``torch.distributed`` from the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``): NCCL when CUDA is available, else gloo. Returns ``(rank, world, device)``.

    ``timeout_s`` bounds every collective of the default group, so a rank whose peer died stops waiting.
    Already initialised: returns the current rank, world size and device.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local_device()
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"torch.distributed is not initialised and {', '.join(missing)} is not set: start the "
                           f"processes with `torchrun --nproc-per-node N ...`.")
    device = local_device()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs: dict[str, Any] = dict(backend=backend, timeout=timedelta(seconds=timeout_s))
    if device.type == "cuda":
        kwargs["device_id"] = device
    dist.init_process_group(**kwargs)
    return dist.get_rank(), dist.get_world_size(), device


def local_device() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
        return torch.device("cuda", local % torch.cuda.device_count())
    return torch.device("cpu")


def is_main_process() -> bool:
    """True on rank 0, or when not distributed."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def run_guarded(fn: Callable[[], Any], exit_code: int = 1) -> Any:
    """Run ``fn`` on this rank; if it raises, print the error with the rank and end this process at once.

    ``os._exit`` skips interpreter teardown, which could otherwise wait in a collective for the peers that this rank
    abandoned. The peers then fail on their next collective (gloo: connection closed by peer; NCCL: ``torchrun``
    tears the group down, or the process-group timeout fires), so no rank hangs.
    """
    try:
        return fn()
    except BaseException as e:  # noqa: BLE001 - SystemExit/KeyboardInterrupt must not leave peers waiting either
        if isinstance(e, SystemExit) and e.code in (0, None):
            raise
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        print(f"[vdit-accel rank {rank}] error: {type(e).__name__}: {e}", file=sys.stderr)
        if not isinstance(e, (ValueError, FileNotFoundError)):
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)
