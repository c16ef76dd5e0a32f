"""The embedded default model: a tiny trained text-to-video WanPipeline shipped inside the package.

Real diffusers classes (``WanTransformer3DModel``, ``AutoencoderKLWan``, ``UMT5EncoderModel``,
``FlowMatchEulerDiscreteScheduler``) trained on procedurally generated clips of coloured shapes moving over plain or
textured backgrounds (see ``vdit_accel/assets/tiny-shapes-t2v/README.md``). It loads offline and generates a 64×64,
17-frame clip in about a second on a CPU, with a 5×8×8 = 320-token latent grid: real spatio-temporal attention,
so acceleration quality numbers on it mean something (random weights would not).

>>> from vdit_accel.tiny_model import load_default_pipeline, DEFAULT_GENERATION_KWARGS, EXAMPLE_PROMPTS
>>> pipe = load_default_pipeline()
>>> frames = pipe(EXAMPLE_PROMPTS[0], output_type="pt").frames  # [1, 17, 3, 64, 64]: the trained size by default

:func:`load_default_pipeline` returns a :class:`~vdit_accel.tiny_model.pipeline.TinyShapesWanPipeline`, a
``WanPipeline`` whose call defaults are :data:`DEFAULT_GENERATION_KWARGS` and which rejects sizes the model cannot
run (its RoPE table has 64 positions per axis: at most 512 px a side) with an error naming the limit.

Training code (:mod:`.train`) is not imported here; re-train with
``python -m vdit_accel.tiny_model.train --out vdit_accel/assets/tiny-shapes-t2v --seed 0``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = [
    "DEFAULT_GENERATION_KWARGS",
    "DEFAULT_MODEL_DIR",
    "EXAMPLE_PROMPTS",
    "RETRAIN_COMMAND",
    "load_default_pipeline",
]

DEFAULT_MODEL_DIR: Path = Path(__file__).resolve().parent.parent / "assets" / "tiny-shapes-t2v"
RETRAIN_COMMAND = f"python -m vdit_accel.tiny_model.train --out {DEFAULT_MODEL_DIR} --seed 0"

# Settings the model was trained for. 17 frames × 64×64 px → latent 5×16×16 → 5×8×8 = 320 video tokens.
DEFAULT_GENERATION_KWARGS: dict = {
    "height": 64,
    "width": 64,
    "num_frames": 17,
    "num_inference_steps": 20,
    "guidance_scale": 5.0,
    "max_sequence_length": 16,
}

# Every prompt uses the training vocabulary: colour ∈ {red, green, blue, yellow, purple}, shape ∈ {circle, square,
# triangle, diamond}, direction ∈ {left, right, up, down}, background ∈ {black, gray, checkered, striped}.
EXAMPLE_PROMPTS: list[str] = [
    "a red circle moving right on a black background",
    "a blue square moving left on a gray background",
    "a yellow triangle moving down on a checkered background",
    "a green diamond moving up on a striped background",
    "a purple circle moving down on a black background",
    "a green square moving right on a checkered background",
]


def load_default_pipeline(torch_dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                          model_dir: str | os.PathLike | None = None):
    """Load the bundled tiny text-to-video ``WanPipeline`` offline (nothing is downloaded), as a
    :class:`~vdit_accel.tiny_model.pipeline.TinyShapesWanPipeline`: called without sizes it generates at the trained
    size (:data:`DEFAULT_GENERATION_KWARGS`), and a size it cannot run raises a ``ValueError`` naming the limit.

    Args:
        torch_dtype (`torch.dtype`, defaults to `torch.float32`): dtype of all components. fp32 is what it was
            trained in and the only dtype tested on CPU; bf16/fp16 are for GPUs.
        device (`str` or `torch.device`, defaults to `"cpu"`): where to move the pipeline.
        model_dir (`str`, *optional*): another folder in ``save_pretrained`` layout (e.g. a re-trained copy);
            defaults to :data:`DEFAULT_MODEL_DIR`.

    Raises:
        FileNotFoundError: the weights folder is missing, with the command that re-creates it.
    """
    from .pipeline import TinyShapesWanPipeline

    path = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"The bundled tiny model is missing: no model_index.json in {path}. Re-create it (about an hour on "
            f"2 CPU cores) with:\n  python -m vdit_accel.tiny_model.train --out {path} --seed 0\n"
            "or reinstall vdit-accel (the weights ship as package data under vdit_accel/assets/)."
        )
    # diffusers 0.42 renamed `torch_dtype` to `dtype` (the old name still works, with a deprecation warning).
    pipe = TinyShapesWanPipeline.from_pretrained(str(path), dtype=torch_dtype, local_files_only=True)
    return pipe.to(device)
