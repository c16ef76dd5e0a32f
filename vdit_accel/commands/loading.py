"""Resolve a ``--model`` argument to a pipeline: the bundled model, a tiny offline test pipeline, a local folder or a
Hugging Face hub id."""

from __future__ import annotations

import os

import torch

TINY_MODELS = ("tiny-wan", "tiny-cogvideox")


def bundled_model_available() -> bool:
    try:
        from ..tiny_model import DEFAULT_MODEL_DIR
    except ImportError:
        return False
    return os.path.isfile(os.path.join(DEFAULT_MODEL_DIR, "model_index.json"))


def load_pipeline(model: str | None = None, torch_dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Load a pipeline.

    Args:
        model: ``None``/``"default"`` for the bundled tiny trained model; ``"tiny-wan"`` / ``"tiny-cogvideox"`` for
            tiny random pipelines (tests); otherwise a local folder or a hub id given to
            ``DiffusionPipeline.from_pretrained``.
    """
    if model in (None, "", "default"):
        if not bundled_model_available():
            raise FileNotFoundError(
                "The bundled model's weights are missing from vdit_accel/assets/. Re-install vdit-accel, or train "
                "them with `python -m vdit_accel.tiny_model.train`, or pass --model tiny-wan / a hub id."
            )
        from ..tiny_model import load_default_pipeline

        return load_default_pipeline(torch_dtype=torch_dtype, device=device)
    if model in TINY_MODELS:
        from .. import testing

        pipe = testing.build_tiny_wan_pipeline() if model == "tiny-wan" else testing.build_tiny_cogvideox_pipeline()
        return pipe.to(device) if torch_dtype == torch.float32 else pipe.to(device=device, dtype=torch_dtype)
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=torch_dtype)
    except OSError as e:
        raise OSError(f"Could not load --model {model!r}: {e}. Pass a local pipeline folder, a hub id reachable "
                      f"from this machine, 'default' (bundled model) or one of {TINY_MODELS}.") from e
    return pipe.to(device)
