import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread, here and in every process the tests start (search workers, kill-and-resume, parallel ranks):
# tests compare results bit for bit across processes, which holds only with the same thread count everywhere. Set
# before torch is imported, and pinned again below in case a plugin imported torch first.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

import vdit_accel  # noqa: E402,F401  (registers DiffusionPipeline.enable_acceleration)
from vdit_accel import testing  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def run_pipe(pipe, steps=6, seed=0, cfg=True, batch=1, height=64, width=64, frames=17, **extra):
    # batch > 1 as a list of prompts: CogVideoXPipeline ignores num_videos_per_prompt
    prompts = ["a dog dancing on the beach", "a red car in the city at night", "a cat running"][:batch]
    kw = dict(prompt=prompts, height=height, width=width, num_frames=frames,
              num_inference_steps=steps, max_sequence_length=16, output_type="pt",
              generator=torch.Generator().manual_seed(seed), guidance_scale=6.0 if cfg else 1.0)
    if cfg:
        kw["negative_prompt"] = ["blurry low quality"] * batch
    kw.update(extra)
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        return pipe(**kw).frames


def hook_names(module):
    """Names of the diffusers hooks registered anywhere under ``module``."""
    names = set()
    for _, m in module.named_modules():
        reg = getattr(m, "_diffusers_hook", None)
        if reg is not None:
            names.update(reg.hooks)
    return names


def processors(transformer):
    """``{module name: attention processor}`` of every attention module."""
    return {n: m.processor for n, m in transformer.named_modules() if hasattr(m, "processor")}


FAMILIES = {
    "wan": lambda: testing.build_tiny_wan_pipeline(),
    "cogvideox-rope": lambda: testing.build_tiny_cogvideox_pipeline(use_rope=True),
    "cogvideox-sincos": lambda: testing.build_tiny_cogvideox_pipeline(use_rope=False),
}


@pytest.fixture(params=list(FAMILIES), ids=list(FAMILIES))
def tiny_pipe(request):
    return FAMILIES[request.param]()


@pytest.fixture(autouse=True)
def _restore_diffusers_attention_backend():
    """``ModelMixin.set_attention_backend`` also sets diffusers' process-wide active backend; put it back after each
    test so a test that picks a backend (test_compile) does not change the numerics of later ones."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    saved = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry._active_backend = saved
