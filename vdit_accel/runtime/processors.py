"""Installing and restoring attention processors: the one place that swaps a module's processor."""

from __future__ import annotations

import torch


def set_processor(module: torch.nn.Module, processor) -> None:
    """Set ``module``'s attention processor. ``Attention`` / ``AttentionModuleMixin`` have ``set_processor``;
    ``MochiAttention`` has only the attribute."""
    if hasattr(module, "set_processor"):
        module.set_processor(processor)
    else:
        module.processor = processor
