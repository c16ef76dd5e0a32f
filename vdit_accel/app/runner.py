"""The demo's engine, everything that is not UI: input checks against the model's size rules, the dense cache, the
accelerated run with token masks recorded, quality metrics and mp4 files. :mod:`.page` lays out the Gradio page and
turns each click into one :meth:`DemoRunner.run`; nothing here imports Gradio.

>>> import vdit_accel
>>> from vdit_accel.app import DemoRequest, DemoRunner
>>> runner = DemoRunner(vdit_accel.load_default_pipeline(), model="default")      # doctest: +SKIP
>>> result = runner.run(DemoRequest(prompt="a red circle moving right", seed=3))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable

import torch

from ..api import disable_acceleration, enable_acceleration, get_runtime, summary
from ..commands.compare import Generation, GenerationSettings, generate, save_video
from ..config import AccelerationConfig, TokenSelectionConfig
from ..schedule import BudgetSchedule, predicted_speedup
from .heatmap import heatmap_frames, recompute_fractions, runtime_calls

# Settings of the tiny random test pipelines (same as `vdit-accel generate --model tiny-wan`).
TINY_DEFAULTS = dict(height=64, width=64, num_frames=17, num_inference_steps=10, guidance_scale=6.0,
                     max_sequence_length=16)
MAX_STEPS = 200
VIDEO_FPS = 8
HEATMAP_FPS = 2
KEEP_RUNS = 16  # mp4 files of older runs are deleted from the output folder
Progress = Callable[[float, str], None]


class DemoInputError(ValueError):
    """Input the demo cannot run; the message is shown in the page as is."""


@dataclass
class DemoRequest:
    """The raw values of the page's inputs (numbers may arrive as floats or None from the browser)."""

    prompt: str
    negative_prompt: str | None = None
    seed: Any = 0
    num_inference_steps: Any = None
    num_frames: Any = None
    height: Any = None
    width: Any = None
    guidance_scale: Any = None
    speedup: Any = 2.0
    schedule_file: str | None = None
    token_selection: bool = True
    score_reuse: bool = False


@dataclass
class DemoResult:
    dense: Generation
    accelerated: Generation
    dense_cached: bool
    metrics: dict[str, Any]
    acceleration: dict[str, Any]
    fractions: torch.Tensor  # [steps, F', H', W'] share of block executions that recomputed each token
    schedule_source: str
    dense_fraction: float = 0.0
    token_selection: bool = True
    paths: dict[str, str] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.dense.seconds / self.accelerated.seconds

    @property
    def predicted_speedup(self) -> float | None:
        """The cost model's transformer speedup of the budgets (it models token selection only)."""
        if not self.token_selection:
            return None
        return predicted_speedup(self.acceleration["budgets"], self.dense_fraction)


def default_generation_kwargs(model: str | None, pipe) -> dict[str, Any]:
    """What the page starts with: the bundled model's training settings, the tiny pipelines' settings, or the
    defaults of the pipeline's ``__call__`` for any other model."""
    from ..commands.loading import TINY_MODELS

    if model in (None, "", "default"):
        from ..tiny_model import DEFAULT_GENERATION_KWARGS

        return dict(DEFAULT_GENERATION_KWARGS)
    if model in TINY_MODELS:
        return dict(TINY_DEFAULTS)
    import inspect

    params = inspect.signature(pipe.__call__).parameters
    out: dict[str, Any] = {}
    for name in ("height", "width", "num_frames", "num_inference_steps", "guidance_scale", "max_sequence_length"):
        if name in params and params[name].default is not inspect.Parameter.empty:
            out[name] = params[name].default
    if out.get("height") is None or out.get("width") is None:  # e.g. CogVideoX derives them from the config
        cfg = pipe.transformer.config
        scale = _size_rules(pipe).vae_spatial
        out["height"] = out.get("height") or int(getattr(cfg, "sample_height", 60)) * scale
        out["width"] = out.get("width") or int(getattr(cfg, "sample_width", 90)) * scale
    if out.get("num_frames") is None:  # CogVideoX: the transformer's sample_frames
        out["num_frames"] = int(getattr(pipe.transformer.config, "sample_frames", None) or 17)
    out.setdefault("num_inference_steps", 50)
    return out


def _size_rules(pipe):
    """The sizes the model can run: its adapter's rules (VAE and patch multiples, the model's own limits)."""
    from ..adapters import get_adapter

    return get_adapter(pipe.transformer).size_rules(pipe)


def _whole(name: str, value: Any, hint: str = "") -> int:
    """``value`` (an int, a whole float or a string) as an exact int.

    Strings and ints are parsed exactly, never through a float: a float rounds 2**63 - 1 up to 2**63."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DemoInputError(f"{name} is empty; enter a whole number.{hint}")
    try:
        if isinstance(value, bool):
            raise TypeError
        exact = Fraction(value.strip()) if isinstance(value, str) else Fraction(value)
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
        raise DemoInputError(f"{name} must be a whole number, got {value!r}.{hint}") from None
    if exact.denominator != 1:
        raise DemoInputError(f"{name} must be a whole number, got {value!r}.{hint}")
    return int(exact)


def _as_int(name: str, value: Any, lo: int, hi: int, hint: str = "") -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DemoInputError(f"{name} is empty; enter a whole number between {lo} and {hi}.{hint}")
    v = _whole(name, value, hint)
    if not lo <= v <= hi:
        raise DemoInputError(f"{name} must be between {lo} and {hi}, got {v}.{hint}")
    return v


def _score_reuse_config():
    """A default score-reuse (TimeRipple) config, or a readable error when this build does not have the method."""
    import importlib

    for module in ("vdit_accel.config", "vdit_accel.methods.score_reuse"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        if hasattr(mod, "ReuseConfig"):
            return mod.ReuseConfig()
    raise DemoInputError("Score reuse (TimeRipple) is not available in this vdit-accel build "
                         "(no vdit_accel.methods.score_reuse.ReuseConfig). Untick 'Score reuse'.")


def score_reuse_available() -> bool:
    try:
        _score_reuse_config()
    except DemoInputError:
        return False
    return True


class DemoRunner:
    """Runs one comparison per click on a shared pipeline (one at a time) and caches the dense side.

    Args:
        pipe: a supported diffusers pipeline.
        model (`str`): its name, part of the dense cache key and shown in the page.
        defaults (`dict`, *optional*): starting values of the inputs (default: :func:`default_generation_kwargs`).
        out_dir (`str`, *optional*): where the mp4 files go (default: a new temporary folder).
        cache_size (`int`, defaults to 8): dense generations kept (least recently used are dropped).
    """

    def __init__(self, pipe, model: str = "custom", defaults: dict | None = None, out_dir: str | None = None,
                 cache_size: int = 8):
        from ..adapters import get_adapter

        get_adapter(pipe.transformer)  # an unsupported model fails at start-up, not at the first click
        self.pipe = pipe
        self.model = model
        self.defaults = dict(defaults) if defaults is not None else default_generation_kwargs(model, pipe)
        self.rules = _size_rules(pipe)
        self.out_dir = out_dir or tempfile.mkdtemp(prefix="vdit-demo-")
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, Generation] = OrderedDict()
        self._lock = threading.Lock()
        self._runs = 0

    # ------------------------------------------------------------------------------------------------ checks
    def settings(self, req: DemoRequest) -> GenerationSettings:
        """Check the inputs against what the model can take; raises :class:`DemoInputError` with the fix."""
        if not isinstance(req.prompt, str) or not req.prompt.strip():
            raise DemoInputError("The prompt is empty: describe the video to generate, e.g. "
                                 "'a red circle moving right on a black background'.")
        size = {}  # checked against the model's own size rules (its adapter's), before anything runs
        for label, name, raw in (("Height", "height", req.height), ("Width", "width", req.width),
                                 ("Frames", "num_frames", req.num_frames)):
            size[name] = _whole(label, raw)
            problem = self.rules.problem(name, size[name])
            if problem is not None:
                raise DemoInputError(f"{label}: {problem}")
        height, width, frames = size["height"], size["width"], size["num_frames"]
        steps = _as_int("Steps", req.num_inference_steps, 1, MAX_STEPS)
        seed = _as_int("Seed", req.seed, 0, 2**63 - 1)
        guidance = req.guidance_scale if req.guidance_scale is not None else self.defaults.get("guidance_scale")
        if guidance is not None:
            try:
                guidance = float(guidance)
            except (TypeError, ValueError):
                raise DemoInputError(f"Guidance scale must be a number, got {guidance!r}.") from None
            if not 0.0 <= guidance <= 50.0:
                raise DemoInputError(f"Guidance scale must be between 0 and 50, got {guidance}.")
        negative = req.negative_prompt.strip() if isinstance(req.negative_prompt, str) else None
        return GenerationSettings(prompt=req.prompt.strip(), negative_prompt=negative or None, seed=seed,
                                  num_inference_steps=steps, height=height, width=width, num_frames=frames,
                                  guidance_scale=guidance,
                                  max_sequence_length=self.defaults.get("max_sequence_length"))

    def dense_fraction(self, s: GenerationSettings) -> float:
        """The share of a block's FLOPs that token selection cannot skip at this size (the cost model's ``f``)."""
        from ..cost import block_flops

        tokens = self.rules.num_tokens(s.height, s.width, s.num_frames)
        return block_flops(self.pipe.transformer, tokens, s.max_sequence_length or 0).dense_fraction

    def acceleration_config(self, req: DemoRequest, settings: GenerationSettings) -> tuple[AccelerationConfig, str]:
        """The config for the accelerated side and a description of where its schedule came from. An uploaded
        schedule file wins over the target speedup; both are resolved for this run's step count and size up front
        (as the pipeline will), so an unreachable target fails before anything is generated."""
        steps = settings.num_inference_steps
        try:
            fraction = self.dense_fraction(settings)
            if req.schedule_file:
                schedule = BudgetSchedule.load(req.schedule_file)
                schedule.resolve(steps, fraction)
                schedule.check_matches(height=settings.height, width=settings.width, num_frames=settings.num_frames)
                source = f"schedule file {os.path.basename(req.schedule_file)}"
            else:
                if req.speedup is None:
                    raise DemoInputError("Target speedup is empty; enter e.g. 2.0, or upload a schedule file.")
                schedule = BudgetSchedule.for_speedup(float(req.speedup))
                schedule.resolve(steps, fraction)
                source = f"target speedup {float(req.speedup):.2f}x"
            token_selection = TokenSelectionConfig() if req.token_selection else None
            reuse = _score_reuse_config() if req.score_reuse else None
            if token_selection is None and reuse is None:
                raise DemoInputError("Both methods are off: tick 'Token selection' and/or 'Score reuse' to have "
                                     "something to accelerate.")
            return AccelerationConfig(schedule=schedule, token_selection=token_selection, reuse=reuse), source
        except DemoInputError:
            raise
        except (ValueError, TypeError, FileNotFoundError) as e:
            raise DemoInputError(str(e)) from e

    # ------------------------------------------------------------------------------------------------ running
    def warm_up(self) -> None:
        """One short dense and accelerated run at the default size, so the first click's timings do not include
        one-time start-up costs (allocator growth, lazy initialisation), which would inflate its speedup."""
        d = self.defaults
        req = DemoRequest(prompt="warm-up", num_inference_steps=3, num_frames=d.get("num_frames"),
                          height=d.get("height"), width=d.get("width"), guidance_scale=d.get("guidance_scale"),
                          speedup=1.0)
        settings = self.settings(req)
        with self._lock:
            self._generate(settings, None)
            enable_acceleration(self.pipe, schedule=[1.0, 0.5, 1.0])  # a sparse middle step runs the sparse path
            try:
                self._generate(settings, None)
            finally:
                disable_acceleration(self.pipe)

    def cache_key(self, s: GenerationSettings) -> tuple:
        return (self.model, s.prompt, s.negative_prompt, s.seed, s.num_inference_steps, s.num_frames, s.height,
                s.width, s.guidance_scale, s.max_sequence_length)

    def _generate(self, settings: GenerationSettings, on_step: Callable[[int, int], None] | None) -> Generation:
        import dataclasses
        import inspect

        extra = dict(settings.extra)
        if on_step is not None and "callback_on_step_end" in inspect.signature(self.pipe.__call__).parameters:
            n = settings.num_inference_steps

            def callback(pipe, i, t, callback_kwargs):
                on_step(i + 1, n)
                return callback_kwargs

            extra["callback_on_step_end"] = callback
        return generate(self.pipe, dataclasses.replace(settings, extra=extra), progress=False)

    def run(self, req: DemoRequest, progress: Progress | None = None) -> DemoResult:
        """Check the inputs, take the dense video from the cache or generate it, generate the accelerated one with
        token masks recorded, compare, write the mp4 files."""
        from ..quality import compare_videos

        report = progress or (lambda fraction, desc: None)
        settings = self.settings(req)
        config, source = self.acceleration_config(req, settings)
        key = self.cache_key(settings)
        n = settings.num_inference_steps
        with self._lock:
            dense = self._cache.get(key)
            dense_cached = dense is not None
            if dense_cached:
                self._cache.move_to_end(key)
                accel_lo = 0.0
            else:
                report(0.0, "Dense: starting")
                dense = self._generate(settings, lambda i, total: report(0.5 * i / total, f"Dense: step {i}/{total}"))
                self._cache[key] = dense
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
                accel_lo = 0.5
            report(accel_lo, "Accelerated: starting")
            scale = 0.95 - accel_lo
            enable_acceleration(self.pipe, config)
            try:
                runtime = get_runtime(self.pipe)
                runtime.record_masks = True
                accelerated = self._generate(
                    settings, lambda i, total: report(accel_lo + scale * i / total, f"Accelerated: step {i}/{total}"))
                info = summary(self.pipe)
                calls, masks, grid = runtime_calls(runtime), dict(runtime.masks), runtime.grid
            finally:
                disable_acceleration(self.pipe)
            report(0.95, "Comparing and writing videos")
            metrics = compare_videos(dense.frames, accelerated.frames)
            fractions = recompute_fractions(masks, calls, grid, n)
            result = DemoResult(dense=dense, accelerated=accelerated, dense_cached=dense_cached, metrics=metrics,
                                acceleration=info, fractions=fractions, schedule_source=source,
                                dense_fraction=self.dense_fraction(settings), token_selection=req.token_selection)
            self._runs += 1
            result.paths = self._write_videos(result, settings)
        return result

    def _write_videos(self, result: DemoResult, settings: GenerationSettings) -> dict[str, str]:
        old = os.path.join(self.out_dir, f"run{self._runs - KEEP_RUNS:04d}")
        for kind in ("dense", "accelerated", "heatmap"):  # Gradio serves copies from its cache; keep disk bounded
            if os.path.exists(f"{old}-{kind}.mp4"):
                os.remove(f"{old}-{kind}.mp4")
        stem = os.path.join(self.out_dir, f"run{self._runs:04d}")
        heat = heatmap_frames(result.fractions, (settings.height, settings.width), result.acceleration["budgets"])
        return dict(dense=save_video(result.dense.frames, f"{stem}-dense.mp4", VIDEO_FPS),
                    accelerated=save_video(result.accelerated.frames, f"{stem}-accelerated.mp4", VIDEO_FPS),
                    heatmap=save_video(heat, f"{stem}-heatmap.mp4", HEATMAP_FPS))
