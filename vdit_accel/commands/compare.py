"""Dense and accelerated generation side by side: same pipeline, prompt, seed and steps; timings and quality.

Used by ``vdit-accel generate``, the demo, the VBench runner and the benchmarks.
"""

from __future__ import annotations

import dataclasses
import inspect
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..api import disable_acceleration, enable_acceleration, summary
from ..config import AccelerationConfig


@dataclass
class GenerationSettings:
    prompt: str
    negative_prompt: str | None = None
    seed: int = 0
    num_inference_steps: int = 20
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    guidance_scale: float | None = None
    max_sequence_length: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("`prompt` is empty; describe the video to generate, e.g. 'a red circle moving right'.")
        if not isinstance(self.num_inference_steps, int) or self.num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive int, got {self.num_inference_steps!r}.")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"`seed` must be a non-negative int, got {self.seed!r}.")

    def pipeline_kwargs(self, pipe) -> dict[str, Any]:
        params = inspect.signature(pipe.__call__).parameters
        kw: dict[str, Any] = dict(prompt=self.prompt, num_inference_steps=self.num_inference_steps,
                                  generator=torch.Generator("cpu").manual_seed(self.seed), output_type="pt")
        for name in ("negative_prompt", "height", "width", "num_frames", "guidance_scale", "max_sequence_length"):
            value = getattr(self, name)
            if value is not None and name in params:
                kw[name] = value
        kw.update(self.extra)
        return kw


@dataclass
class Generation:
    frames: torch.Tensor  # [F, C, H, W] float in [0, 1]
    seconds: float
    transformer_seconds: float = 0.0  # wall-clock inside the transformer calls
    transformer_cpu_seconds: float = 0.0  # process CPU time inside the transformer calls


class _TransformerClock:
    """Wall-clock and process CPU time spent inside a pipeline's transformer calls (torch forward hooks around the
    whole call, so diffusers' hooks and vdit-accel's skipped steps are inside)."""

    def __init__(self, pipe):
        self.wall = self.cpu = 0.0
        self._start: list[tuple[float, float]] = []
        self._handles = []
        for name in ("transformer", "transformer_2"):
            module = getattr(pipe, name, None)
            if isinstance(module, torch.nn.Module):
                self._handles.append(module.register_forward_pre_hook(self._pre))
                self._handles.append(module.register_forward_hook(self._post))

    def _pre(self, *_):
        self._start.append((time.perf_counter(), time.process_time()))

    def _post(self, *_):
        wall, cpu = self._start.pop()
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu

    def remove(self):
        for h in self._handles:
            h.remove()


def generate(pipe, settings: GenerationSettings, progress: bool = True) -> Generation:
    """One timed pipeline call; returns frames ``[F, C, H, W]`` in [0, 1] (first video of the batch)."""
    settings.validate()
    pipe.set_progress_bar_config(disable=not progress)
    kw = settings.pipeline_kwargs(pipe)
    clock = _TransformerClock(pipe)
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            out = pipe(**kw)
    finally:
        clock.remove()
    seconds = time.perf_counter() - t0
    frames = out.frames
    if isinstance(frames, list):
        frames = frames[0]
    frames = torch.as_tensor(frames)
    if frames.dim() == 5:
        frames = frames[0]
    return Generation(frames=frames.float().clamp(0, 1).cpu(), seconds=seconds, transformer_seconds=clock.wall,
                      transformer_cpu_seconds=clock.cpu)


@dataclass
class Comparison:
    dense: Generation
    accelerated: Generation
    metrics: dict[str, Any]
    acceleration: dict[str, Any]
    runs: int = 1  # timed runs per side; the times are their medians

    @property
    def speedup(self) -> float:
        """Whole pipeline (text encoder, transformer, VAE), wall-clock."""
        return self.dense.seconds / self.accelerated.seconds

    @property
    def transformer_speedup(self) -> float:
        """The transformer calls only (what vdit-accel accelerates), wall-clock."""
        return self.dense.transformer_seconds / max(self.accelerated.transformer_seconds, 1e-9)

    @property
    def transformer_cpu_speedup(self) -> float:
        """The transformer calls only, process CPU time (least inflated by other jobs on a shared machine)."""
        return self.dense.transformer_cpu_seconds / max(self.accelerated.transformer_cpu_seconds, 1e-9)

    def report(self) -> dict[str, Any]:
        return dict(dense_seconds=self.dense.seconds, accelerated_seconds=self.accelerated.seconds,
                    speedup=self.speedup, timed_runs=self.runs,
                    speedup_kind=f"measured wall-clock ratio, median of {self.runs} interleaved run(s) each, same "
                                 f"process",
                    transformer_seconds=dict(dense=self.dense.transformer_seconds,
                                             accelerated=self.accelerated.transformer_seconds),
                    transformer_cpu_seconds=dict(dense=self.dense.transformer_cpu_seconds,
                                                 accelerated=self.accelerated.transformer_cpu_seconds),
                    transformer_speedup=self.transformer_speedup, transformer_cpu_speedup=self.transformer_cpu_speedup,
                    quality=self.metrics, acceleration=self.acceleration)


def compare(pipe, settings: GenerationSettings, config: AccelerationConfig, dense: Generation | None = None,
            progress: bool = True, min_seconds: float = 2.0, max_runs: int = 5) -> Comparison:
    """Generate dense (unless ``dense`` is given, e.g. cached), then accelerated with ``config``; compare.

    A run shorter than ``min_seconds`` (a small model) is timed again, dense and accelerated interleaved, until the
    dense runs add up to ``min_seconds`` or each side has ``max_runs`` runs; the times are the medians. The frames are
    the first runs' (every run of a side gives the same frames)."""
    from ..quality import compare_videos

    if dense is None:
        # a short untimed run first: the first call of a process pays one-off costs (allocator, lazy initialisation)
        # that would otherwise be charged to the dense side and inflate the speedup
        generate(pipe, dataclasses.replace(settings, num_inference_steps=2), progress=False)
        dense = generate(pipe, settings, progress)
    dense_runs: list[Generation] = [dense]
    accelerated_runs: list[Generation] = []
    info: dict[str, Any] = {}
    while True:
        enable_acceleration(pipe, config)
        try:
            accelerated_runs.append(generate(pipe, settings, progress and not info))
            info = info or summary(pipe)
        finally:
            disable_acceleration(pipe)
        if len(accelerated_runs) >= max_runs or sum(g.seconds for g in dense_runs) >= min_seconds:
            break
        dense_runs.append(generate(pipe, settings, progress=False))
    metrics = compare_videos(dense.frames, accelerated_runs[0].frames)
    return Comparison(dense=_median(dense_runs), accelerated=_median(accelerated_runs), metrics=metrics,
                      acceleration=info, runs=len(accelerated_runs))


def _median(runs: list[Generation]) -> Generation:
    """The first run's frames with the median of each time over ``runs``."""
    med = lambda key: statistics.median(getattr(g, key) for g in runs)  # noqa: E731
    return dataclasses.replace(runs[0], seconds=med("seconds"), transformer_seconds=med("transformer_seconds"),
                               transformer_cpu_seconds=med("transformer_cpu_seconds"))


def save_video(frames: torch.Tensor, path: str, fps: int = 8) -> str:
    """Write ``[F, C, H, W]`` frames in [0, 1] as an H.264 mp4 with imageio-ffmpeg."""
    import imageio.v2 as imageio

    arr = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    # macro_block_size=1 keeps tiny videos at their true size (ffmpeg would otherwise pad to multiples of 16)
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=1,
                            ffmpeg_log_level="error") as writer:
        for frame in arr:
            writer.append_data(frame)
    return path
