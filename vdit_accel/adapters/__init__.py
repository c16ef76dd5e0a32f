"""Model adapters, one small module per transformer family, in a registry keyed by transformer class.

Adding a family: write ``adapters/<family>.py`` defining ``ADAPTER = ModelAdapter(...)`` and add the module name
to ``_FAMILY_MODULES``. Modules are imported lazily on first lookup.
"""

from __future__ import annotations

import importlib

import torch

from .base import BlockFlops, ModelAdapter, QuerySparseAttnProcessor, QuerySparseProcessorBase
from .sizes import SizeRules
from .refused import REFUSED

_FAMILY_MODULES = ("wan", "cogvideox", "hunyuan_video", "ltx", "mochi", "wan_vace", "chronoedit", "skyreels_v2",
                   "wan_animate", "hunyuan_video_framepack", "cosmos", "hunyuan_video15")
_REGISTRY: dict[type, ModelAdapter] = {}


def register_adapter(adapter: ModelAdapter) -> ModelAdapter:
    """Register ``adapter`` for ``adapter.transformer_cls`` (replacing any earlier one)."""
    _REGISTRY[adapter.transformer_cls] = adapter
    return adapter


def _load_all() -> None:
    if _REGISTRY:
        return
    for name in _FAMILY_MODULES:
        register_adapter(importlib.import_module(f".{name}", __name__).ADAPTER)


def registered_adapters() -> list[ModelAdapter]:
    """Every registered adapter, the shipped families first in registry order."""
    _load_all()
    return list(_REGISTRY.values())


def supported_transformers() -> list[str]:
    """Class names of the supported transformers."""
    _load_all()
    return sorted(cls.__name__ for cls in _REGISTRY)


def get_adapter(transformer: torch.nn.Module) -> ModelAdapter:
    """The adapter for ``transformer``'s exact class; raises with the supported list otherwise."""
    _load_all()
    adapter = _REGISTRY.get(type(transformer))
    name = type(transformer).__name__
    if adapter is None and name in REFUSED:
        raise ValueError(f"vdit-accel does not support {name}: {REFUSED[name]}. Supported transformers: "
                         f"{', '.join(supported_transformers())}.")
    if adapter is None:
        raise ValueError(
            f"vdit-accel does not support {type(transformer).__name__}. Supported transformers: "
            f"{', '.join(supported_transformers())}. To add a family, write an adapter in vdit_accel/adapters/."
        )
    return adapter


__all__ = ["BlockFlops", "ModelAdapter", "QuerySparseAttnProcessor", "QuerySparseProcessorBase", "SizeRules",
           "get_adapter", "register_adapter", "registered_adapters", "supported_transformers"]
