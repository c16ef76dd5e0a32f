"""vdit-accel: one-line acceleration for video diffusion transformers in Hugging Face diffusers.

>>> import vdit_accel                 # registers DiffusionPipeline.enable_acceleration / disable_acceleration
>>> pipe.enable_acceleration()        # doctest: +SKIP
>>> pipe.disable_acceleration()       # doctest: +SKIP

Importing this package imports neither triton, DEAP nor Gradio; those load only when their features are used.
"""

from __future__ import annotations

from diffusers import DiffusionPipeline

from .adapters import supported_transformers
from .api import disable_acceleration, enable_acceleration, get_runtime, is_accelerated, set_step, summary
from .config import AccelerationConfig, TokenSelectionConfig
from .methods.score_reuse import ReuseConfig, reuse_summary
from .runtime.processors import ProcessorReplacedError
from .schedule import BudgetSchedule

__version__ = "0.1.0"


def load_default_pipeline(*args, **kwargs):
    """The bundled tiny trained text-to-video pipeline (offline). See :mod:`vdit_accel.tiny_model`."""
    from .tiny_model import load_default_pipeline as _load

    return _load(*args, **kwargs)


def _register_pipeline_methods() -> None:
    # Methods on the base class (not a monkeypatch of any existing behaviour): every pipeline gains the one-liner.
    DiffusionPipeline.enable_acceleration = enable_acceleration
    DiffusionPipeline.disable_acceleration = disable_acceleration
    DiffusionPipeline.is_accelerated = property(is_accelerated)


_register_pipeline_methods()

__all__ = [
    "AccelerationConfig",
    "BudgetSchedule",
    "ProcessorReplacedError",
    "ReuseConfig",
    "TokenSelectionConfig",
    "disable_acceleration",
    "enable_acceleration",
    "get_runtime",
    "is_accelerated",
    "load_default_pipeline",
    "set_step",
    "reuse_summary",
    "summary",
    "supported_transformers",
]
