"""Where an accelerated transformer keeps what :func:`vdit_accel.enable_acceleration` installed on it.

One constant and two look-ups, shared by the API, the methods and the parallel code, so nobody spells the attribute
name as a string or imports a private helper of another module.
"""

from __future__ import annotations

from typing import Any

import torch

HANDLE_ATTR = "_vdit_accel"
TRANSFORMER_COMPONENTS = ("transformer", "transformer_2")  # Wan 2.2 has a second expert


def get_handle(module: torch.nn.Module) -> Any | None:
    """The acceleration handle of an accelerated transformer, or ``None``."""
    return getattr(module, HANDLE_ATTR, None)


def transformers_of(pipe) -> list[tuple[str, torch.nn.Module]]:
    """``[(component name, transformer)]`` of a pipeline (``transformer`` and, for Wan 2.2, ``transformer_2``)."""
    out = []
    for name in TRANSFORMER_COMPONENTS:
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            out.append((name, module))
    return out
