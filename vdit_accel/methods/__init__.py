"""Acceleration methods and their registry.

Each method is one module (or package) holding its config dataclass, its state (a diffusers ``BaseState`` with
``reset``), its hooks, and ``apply_<x>(transformer, adapter, runtime, config) -> remover`` (a zero-argument callable
that removes everything the method installed). The module registers itself here:

>>> register_method("token_selection", apply_token_selection)   # doctest: +SKIP

:func:`vdit_accel.api.accelerate_transformer` applies the registered methods in registration order, each with the
:class:`~vdit_accel.AccelerationConfig` field of the same name (``None`` skips the method), and the acceleration
handle calls the removers in reverse order. Methods never import ``vdit_accel.config`` or ``vdit_accel.api``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Method:
    """One registered acceleration method.

    Args:
        name (`str`): the :class:`~vdit_accel.AccelerationConfig` field that holds the method's config.
        apply (`Callable`): ``apply(transformer, adapter, runtime, config) -> remover``.
    """

    name: str
    apply: Callable[[torch.nn.Module, object, object, object], Callable[[], None]]


_METHODS: dict[str, Method] = {}


def register_method(name: str, apply: Callable) -> Method:
    """Register an acceleration method under the :class:`~vdit_accel.AccelerationConfig` field ``name``.

    Registering the same name again replaces the entry in place (a reloaded module), keeping its order.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"A method name must be an identifier (the AccelerationConfig field), got {name!r}.")
    if not callable(apply):
        raise TypeError(f"`apply` of method {name!r} must be callable, got {type(apply).__name__}.")
    method = Method(name, apply)
    _METHODS[name] = method
    return method


def registered_methods() -> list[Method]:
    """The registered methods, in the order they are applied."""
    return list(_METHODS.values())


# The built-in methods register themselves on import; token selection first (score reuse adds to it when present).
from . import token_selection  # noqa: E402,F401
from . import score_reuse  # noqa: E402,F401

__all__ = ["Method", "register_method", "registered_methods"]
