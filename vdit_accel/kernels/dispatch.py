"""Backend selection for the attention kernels: who can run where, and why not.

Each backend of an op has a checker that returns ``(ok, reason)`` for the given tensors (FLA's verifier pattern).
``backend=None`` picks the first usable backend in the op's priority order and logs, once per reason, why a
preferred one was skipped; an explicitly requested backend that cannot run raises
:class:`BackendUnavailableError` naming the requirement and what was found.

Nothing here imports triton or xformers: availability is probed with :func:`importlib.util.find_spec`, and the
kernel modules are imported only when a kernel is launched.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Callable

import torch

logger = logging.getLogger(__name__)

Check = Callable[..., "tuple[bool, str]"]

_LOGGED: set[str] = set()


class BackendUnavailableError(RuntimeError):
    """An explicitly requested kernel backend cannot run on these inputs (the message names the requirement)."""


def log_once(message: str) -> None:
    """Log an automatic fallback once per distinct message (per process)."""
    if message not in _LOGGED:
        _log(message)


@torch.compiler.disable  # logging inside a compiled region would break the graph on every call, not just the first
def _log(message: str) -> None:
    _LOGGED.add(message)
    logger.info(message)


def triton_interpret() -> bool:
    """Whether ``TRITON_INTERPRET`` is set, read now (triton reads it when a kernel module is first imported)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def package_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def check_triton(q: torch.Tensor, *_: object) -> tuple[bool, str]:
    """Triton runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (tests)."""
    if not package_available("triton"):
        return False, ("needs a CUDA device and the `triton` package (pip install vdit-accel[triton]); "
                       "triton is not installed")
    if q.device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(q.device)
        if q.dtype == torch.bfloat16 and major < 8:
            return False, f"needs a GPU with bf16 tensor cores (SM >= 80) for bf16 inputs; got SM{major}{minor}"
        return True, ""
    if q.device.type == "cpu" and triton_interpret():
        return True, ""
    return False, (f"needs a CUDA device and the `triton` package (pip install vdit-accel[triton]); got device "
                   f"{q.device.type} (CPU tensors run only under TRITON_INTERPRET=1, for tests)")


def check_xformers(q: torch.Tensor, k: torch.Tensor, *_: object) -> tuple[bool, str]:
    """xformers' ``memory_efficient_attention_partial`` (returns the LSE) on CUDA, fp16/bf16, head dim <= 256."""
    if q.device.type != "cuda":
        return False, ("needs a CUDA device and the `xformers` package (pip install vdit-accel[xformers]); got device "
                       f"{q.device.type}")
    if not package_available("xformers"):
        return False, "needs the `xformers` package (pip install vdit-accel[xformers]); it is not installed"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return False, f"needs fp16 or bf16 inputs; got {q.dtype}"
    if q.shape[-1] > 256:
        return False, f"needs head dim <= 256; got {q.shape[-1]}"
    return True, ""


def check_always(*_: object) -> tuple[bool, str]:
    return True, ""


def resolve(op: str, backend: str | None, registry: dict[str, Check], auto_order: list[str], *tensors) -> str:
    """Name of the backend that runs ``op`` on ``tensors``.

    ``registry`` maps every backend of the op to its checker; ``auto_order`` lists, most preferred first, the
    backends ``backend=None`` may pick (the last must always be usable).
    """
    if backend is not None:
        if backend not in registry:
            raise ValueError(f"{op}: unknown backend={backend!r}; choose one of {sorted(registry)} or None "
                             "(automatic).")
        ok, reason = registry[backend](*tensors)
        if not ok:
            raise BackendUnavailableError(f"{op}: backend={backend!r} {reason}.")
        return backend
    skipped = []
    for name in auto_order:
        ok, reason = registry[name](*tensors)
        if ok:
            # Only a skipped *accelerated* backend on an accelerator is news; CPU runs use the reference by design.
            if skipped and tensors[0].device.type != "cpu":
                log_once(f"{op}: using backend {name!r} because " + "; ".join(skipped))
            return name
        skipped.append(f"{name!r} {reason}")
    raise BackendUnavailableError(f"{op}: no usable backend: " + "; ".join(skipped))
