"""Fitness of candidate budget schedules: MSE of the final latents against the dense output of the same seeds.

Work is not repeated:

* **Dense references** are computed once per (prompt, seed) with the real pipeline (``output_type="latent"``, no
  acceleration) and kept; their hash goes into the search checkpoint.
* **Shared budget prefixes** are computed once. Candidates of one batch run in lexicographic order, one prompt at
  a time; at each branch point of the batch the denoising state is snapshotted — latents, the scheduler's state
  and the state of every stateful acceleration hook (token-selection block caches, per CFG branch) — and a later
  candidate with that prefix starts from it. A bounded LRU cache (:class:`SnapshotCache`) keeps snapshots of
  every few prefixes across batches, so a child starts where its parent's prefix ends. A candidate's final
  latents are bit-identical to
  ``pipe.enable_acceleration(schedule=candidate); pipe(..., output_type="latent")`` (tested).
  This walks the denoising loop of :class:`diffusers.WanPipeline` (the bundled model, Wan 2.1 text-to-video); other
  pipelines are evaluated with one real pipeline call per candidate and prompt (no prefix sharing).
* **Identical genomes** are evaluated once (the engine memoises fitness by genome).
* **Worker processes** (:class:`ParallelEvaluator`): each loads the pipeline once; a batch is sorted and cut into
  contiguous slices (so shared prefixes stay in one worker); CUDA devices are assigned round-robin.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..config import TokenSelectionConfig


@dataclass
class RunSpec:
    """What one fitness evaluation generates: every prompt once, with its seed, at these settings."""

    prompts: list[str]
    seeds: list[int]
    num_inference_steps: int
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    guidance_scale: float | None = None
    max_sequence_length: int | None = None
    negative_prompt: str | None = None

    def __post_init__(self):
        if not self.prompts or any(not isinstance(p, str) or not p.strip() for p in self.prompts):
            raise ValueError("The prompt list is empty or has an empty prompt; give one non-empty prompt per line.")
        if len(self.seeds) != len(self.prompts):
            raise ValueError(f"{len(self.seeds)} seeds for {len(self.prompts)} prompts; give one seed per prompt.")
        if not isinstance(self.num_inference_steps, int) or self.num_inference_steps < 2:
            raise ValueError(f"`steps` must be an int >= 2 to search a schedule, got {self.num_inference_steps!r}.")

    def settings(self, i: int):
        from ..commands.compare import GenerationSettings

        return GenerationSettings(prompt=self.prompts[i], negative_prompt=self.negative_prompt, seed=self.seeds[i],
                                  num_inference_steps=self.num_inference_steps, height=self.height, width=self.width,
                                  num_frames=self.num_frames, guidance_scale=self.guidance_scale,
                                  max_sequence_length=self.max_sequence_length)

    def pipeline_kwargs(self, pipe, i: int) -> dict[str, Any]:
        kw = self.settings(i).pipeline_kwargs(pipe)
        kw["output_type"] = "latent"
        return kw


def latent_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).pow(2).mean())


def dense_references(pipe, spec: RunSpec) -> list[torch.Tensor]:
    """Final latents of the plain (un-accelerated) pipeline for every prompt and seed."""
    from ..api import is_accelerated

    if is_accelerated(pipe):
        raise RuntimeError("The pipeline is accelerated; the dense references need the plain pipeline. Call "
                           "`pipe.disable_acceleration()` first.")
    pipe.set_progress_bar_config(disable=True)
    out = []
    with torch.no_grad():
        for i in range(len(spec.prompts)):
            out.append(_first(pipe(**spec.pipeline_kwargs(pipe, i)).frames).detach().float().cpu())
    return out


def references_hash(refs: Sequence[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for r in refs:
        h.update(str(tuple(r.shape)).encode())
        h.update(r.contiguous().numpy().tobytes())
    return h.hexdigest()


def _first(frames) -> torch.Tensor:
    frames = frames[0] if isinstance(frames, (list, tuple)) else frames
    return torch.as_tensor(frames)


# --------------------------------------------------------------------------------------------------------------
# State snapshots: latents + scheduler + every stateful acceleration hook
# --------------------------------------------------------------------------------------------------------------
def stateful_hooks(transformer: torch.nn.Module) -> list:
    """Every diffusers hook under ``transformer`` that keeps per-run state in a ``state_manager`` (the token-selection
    block caches of :mod:`vdit_accel.methods.token_selection`, the step tracker, ...), in module order."""
    hooks = []
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is None:
            continue
        for hook in registry.hooks.values():
            if getattr(hook, "_is_stateful", False) and hasattr(hook, "state_manager"):
                hooks.append(hook)
    return hooks


@dataclass
class Snapshot:
    latents: torch.Tensor
    scheduler: dict[str, Any]
    hook_states: list[dict[str, Any]]


def take_snapshot(latents: torch.Tensor, scheduler, hooks: list) -> Snapshot:
    return Snapshot(latents.clone(), copy.deepcopy(_scheduler_state(scheduler)),
                    [copy.deepcopy(h.state_manager._state_cache) for h in hooks])


def restore_snapshot(snap: Snapshot, scheduler, hooks: list) -> torch.Tensor:
    scheduler.__dict__.update(copy.deepcopy(snap.scheduler))
    for h, states in zip(hooks, snap.hook_states):
        h.state_manager._state_cache = copy.deepcopy(states)
    return snap.latents.clone()


def _scheduler_state(scheduler) -> dict[str, Any]:
    # everything but the (frozen) config: step index, sigmas, multistep solver history, ...
    return {k: v for k, v in scheduler.__dict__.items() if k not in ("_internal_dict", "config")}


# --------------------------------------------------------------------------------------------------------------
# Evaluator
# --------------------------------------------------------------------------------------------------------------
@dataclass
class EvalStats:
    candidates: int = 0  # candidate schedules evaluated (each = one generation per prompt)
    transformer_steps: int = 0  # denoising steps actually run (per prompt; a step = cond + uncond calls)
    naive_steps: int = 0  # steps a one-run-per-candidate evaluation would have run

    def add(self, other: "EvalStats") -> None:
        self.candidates += other.candidates
        self.transformer_steps += other.transformer_steps
        self.naive_steps += other.naive_steps

    def as_dict(self) -> dict[str, int]:
        return dict(candidates=self.candidates, transformer_steps=self.transformer_steps, naive_steps=self.naive_steps)


def supports_prefix_sharing(pipe) -> bool:
    from diffusers import WanPipeline

    # WanPipeline or a subclass that only changes call defaults (the bundled TinyShapesWanPipeline): the denoising
    # loop below is WanPipeline's own
    return (isinstance(pipe, WanPipeline) and getattr(pipe, "transformer_2", None) is None
            and not pipe.config.get("expand_timesteps", False) and pipe.config.get("boundary_ratio") is None)


class Evaluator:
    """Errors of candidate schedules against the dense references, in one process.

    Args:
        pipe: the pipeline (not accelerated).
        spec (`RunSpec`): prompts, seeds and generation settings.
        token_selection (`TokenSelectionConfig`, *optional*): the settings the schedules will run with.
        references (*optional*): dense final latents (computed here when not given).
        prefix_sharing (`bool`, defaults to True): share the steps of common budget prefixes (Wan pipelines).
        cache_mb (`float`, defaults to 1024): memory for prefix snapshots kept across batches (a later generation's
            children share prefixes with their parents); 0 keeps only this batch's branch points.
        cache_stride (`int`, *optional*): snapshot every ``cache_stride``-th prefix for later batches
            (default: ``ceil(steps / 8)``).
    """

    def __init__(self, pipe, spec: RunSpec, token_selection: TokenSelectionConfig | None = None,
                 references: list[torch.Tensor] | None = None, prefix_sharing: bool = True,
                 cache_mb: float = 1024, cache_stride: int | None = None):
        self.pipe = pipe
        self.spec = spec
        # prefix sharing needs each step's state to depend on the budgets so far only (see dense_fast_path)
        self.token_selection = dataclasses.replace(token_selection or TokenSelectionConfig(), dense_fast_path=False)
        self.prefix_sharing = prefix_sharing and supports_prefix_sharing(pipe)
        pipe.set_progress_bar_config(disable=True)
        self.references = references if references is not None else dense_references(pipe, spec)
        self.stats = EvalStats()
        self._inputs: dict[int, dict[str, Any]] = {}
        stride = cache_stride or max(1, math.ceil(spec.num_inference_steps / 8))
        self.cache = SnapshotCache(int(cache_mb * 2**20) if self.prefix_sharing else 0, stride)

    # ------------------------------------------------------------------------------------------------ public
    def evaluate(self, genomes: Sequence[Sequence[float]]) -> list[float]:
        """Mean latent MSE over the prompts for each genome (one budget per step)."""
        n = self.spec.num_inference_steps
        for g in genomes:
            if len(g) != n:
                raise ValueError(f"A genome has {len(g)} budgets but the search runs {n} steps.")
        errors = [0.0] * len(genomes)
        if not genomes:
            return errors
        self.stats.candidates += len(genomes)
        self.stats.naive_steps += len(genomes) * n * len(self.spec.prompts)
        for p in range(len(self.spec.prompts)):
            finals = self._finals_shared(genomes, p) if self.prefix_sharing else self._finals_plain(genomes, p)
            for j, lat in enumerate(finals):
                errors[j] += latent_mse(lat, self.references[p]) / len(self.spec.prompts)
        return errors

    def final_latents(self, budgets: Sequence[float], prompt_index: int) -> torch.Tensor:
        """Final latents of one schedule on one prompt (the path :meth:`evaluate` takes)."""
        fn = self._finals_shared if self.prefix_sharing else self._finals_plain
        return fn([list(budgets)], prompt_index)[0]

    # ------------------------------------------------------------------------------------------------ plain
    def _finals_plain(self, genomes, p: int) -> list[torch.Tensor]:
        from ..api import disable_acceleration, enable_acceleration

        out = []
        for g in genomes:
            enable_acceleration(self.pipe, schedule=list(g), token_selection=self.token_selection)
            try:
                with torch.no_grad():
                    out.append(_first(self.pipe(**self.spec.pipeline_kwargs(self.pipe, p)).frames).float().cpu())
            finally:
                disable_acceleration(self.pipe)
            self.stats.transformer_steps += len(g)
        return out

    # ------------------------------------------------------------------------------------------------ shared
    def _prepare(self, p: int) -> dict[str, Any]:
        """Text embeddings and initial noise of prompt ``p``, exactly as WanPipeline.__call__ computes them."""
        if p in self._inputs:
            return self._inputs[p]
        pipe, s = self.pipe, self.spec.settings(p)
        kw = s.pipeline_kwargs(pipe)
        height, width, frames = kw.get("height", 480), kw.get("width", 832), kw.get("num_frames", 81)
        guidance = kw.get("guidance_scale", 5.0)
        t_scale, s_scale = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
        patch = pipe.transformer.config.patch_size
        if frames % t_scale != 1 or height % (s_scale * patch[1]) or width % (s_scale * patch[2]):
            raise ValueError(
                f"num_frames={frames}, height={height}, width={width} would be rounded by the pipeline; use "
                f"num_frames = {t_scale}k+1 and height/width multiples of {s_scale * patch[1]}.")
        device = pipe._execution_device
        pipe._guidance_scale = guidance
        with torch.no_grad():
            pe, ne = pipe.encode_prompt(prompt=s.prompt, negative_prompt=kw.get("negative_prompt"),
                                        do_classifier_free_guidance=guidance > 1.0, num_videos_per_prompt=1,
                                        max_sequence_length=kw.get("max_sequence_length", 512), device=device)
        dtype = pipe.transformer.dtype
        latents = pipe.prepare_latents(1, pipe.transformer.config.in_channels, height, width, frames, torch.float32,
                                       device, kw["generator"])
        self._inputs[p] = dict(prompt_embeds=pe.to(dtype), negative_prompt_embeds=None if ne is None else ne.to(dtype),
                               latents=latents, guidance=guidance, cfg=guidance > 1.0)
        return self._inputs[p]

    def _step(self, inp: dict[str, Any], i: int, latents: torch.Tensor) -> torch.Tensor:
        pipe, tr = self.pipe, self.pipe.transformer
        t = pipe.scheduler.timesteps[i]
        x = latents.to(tr.dtype)
        timestep = t.expand(latents.shape[0])
        ctx = dict(step_index=i, sigma=float(pipe.scheduler.sigmas[i]),
                   num_inference_steps=len(pipe.scheduler.timesteps))  # what WanPipeline passes
        with tr.cache_context("cond", **ctx):
            noise = tr(hidden_states=x, timestep=timestep, encoder_hidden_states=inp["prompt_embeds"],
                       attention_kwargs=None, return_dict=False)[0]
        if inp["cfg"]:
            with tr.cache_context("uncond", **ctx):
                uncond = tr(hidden_states=x, timestep=timestep, encoder_hidden_states=inp["negative_prompt_embeds"],
                            attention_kwargs=None, return_dict=False)[0]
            noise = uncond + inp["guidance"] * (noise - uncond)
        self.stats.transformer_steps += 1
        return pipe.scheduler.step(noise, t, latents, return_dict=False)[0]

    def _finals_shared(self, genomes, p: int) -> list[torch.Tensor]:
        """Final latents of ``genomes`` on prompt ``p``, computing every distinct budget prefix once.

        Genomes run in lexicographic order. Each starts from the deepest snapshot of its own prefix (pinned
        snapshots at the branch points of this batch, or the LRU cache of earlier batches), runs the remaining
        steps, and snapshots the prefixes a later genome of the batch needs (and, for later batches, every
        ``cache_stride``-th prefix while the cache has room).
        """
        from ..api import disable_acceleration, enable_acceleration, get_runtime

        n = self.spec.num_inference_steps
        inp = self._prepare(p)
        pipe = self.pipe
        unique = sorted({tuple(float(b) for b in g) for g in genomes})
        needed = set()
        for a, b in zip(unique, unique[1:]):
            lcp = next((i for i in range(n) if a[i] != b[i]), n)
            if 1 <= lcp < n:
                needed.add(b[:lcp])
        pinned: dict[tuple, Snapshot] = {}
        out: dict[tuple, torch.Tensor] = {}
        enable_acceleration(pipe, schedule=[1.0] * n, token_selection=self.token_selection)
        try:
            rt = get_runtime(pipe)
            rt.budgets, rt.num_steps = [1.0] * n, n  # set per step below; the tracker keeps a list of this length
            hooks = stateful_hooks(pipe.transformer)
            with torch.no_grad():
                for g in unique:
                    start, snap = 0, None
                    for j in range(n - 1, 0, -1):
                        snap = pinned.get(g[:j]) or self.cache.get((p, g[:j]))
                        if snap is not None:
                            start = j
                            break
                    if snap is not None:
                        latents = restore_snapshot(snap, pipe.scheduler, hooks)
                    else:
                        pipe.scheduler.set_timesteps(n, device=pipe._execution_device)
                        pipe.scheduler.set_begin_index(0)
                        for h in hooks:
                            h.state_manager.reset()
                        latents = inp["latents"].clone()
                    for i in range(start, n):
                        rt.budgets[i] = g[i]
                        latents = self._step(inp, i, latents)
                        prefix = g[:i + 1]
                        if i + 1 < n and prefix in needed and prefix not in pinned:
                            pinned[prefix] = take_snapshot(latents, pipe.scheduler, hooks)
                        elif i + 1 < n and (i + 1) % self.cache.stride == 0 and self.cache.wants((p, prefix)):
                            self.cache.put((p, prefix), take_snapshot(latents, pipe.scheduler, hooks))
                    out[g] = latents.float().cpu()
        finally:
            disable_acceleration(pipe)
        return [out[tuple(float(b) for b in g)] for g in genomes]


class SnapshotCache:
    """Least-recently-used snapshots of budget prefixes kept across batches (generations), within ``max_bytes``."""

    def __init__(self, max_bytes: int, stride: int):
        from collections import OrderedDict

        self.max_bytes = max_bytes
        self.stride = max(1, stride)
        self.bytes = 0
        self.hits = 0
        self._d: "OrderedDict[tuple, tuple[Snapshot, int]]" = OrderedDict()

    def get(self, key) -> Snapshot | None:
        item = self._d.get(key)
        if item is None:
            return None
        self._d.move_to_end(key)
        self.hits += 1
        return item[0]

    def wants(self, key) -> bool:
        return self.max_bytes > 0 and key not in self._d

    def put(self, key, snap: Snapshot) -> None:
        size = snapshot_bytes(snap)
        if size > self.max_bytes:
            return
        self._d[key] = (snap, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, s) = self._d.popitem(last=False)
            self.bytes -= s

    def __len__(self) -> int:
        return len(self._d)


def snapshot_bytes(snap: Snapshot) -> int:
    total = snap.latents.numel() * snap.latents.element_size()
    for states in snap.hook_states:
        for st in states.values():
            for v in vars(st).values():
                if torch.is_tensor(v):
                    total += v.numel() * v.element_size()
    return total


# --------------------------------------------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------------------------------------------
@dataclass
class LoadSpec:
    """How a worker process loads the pipeline (see :func:`vdit_accel.commands.loading.load_pipeline`)."""

    model: str
    dtype: str = "float32"
    device: str = "cpu"
    threads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


_WORKER: Evaluator | None = None


def _worker_init(load: LoadSpec, spec: RunSpec, ts: TokenSelectionConfig, refs, prefix_sharing: bool) -> None:
    global _WORKER
    torch.set_num_threads(max(1, load.threads))
    from ..commands.loading import load_pipeline

    pipe = load_pipeline(load.model, getattr(torch, load.dtype), load.device)
    _WORKER = Evaluator(pipe, spec, ts, references=[r.to(torch.float32) for r in refs], prefix_sharing=prefix_sharing)


def _worker_eval(genomes) -> tuple[list[float], dict[str, int]]:
    assert _WORKER is not None
    _WORKER.stats = EvalStats()
    errors = _WORKER.evaluate(genomes)
    return errors, _WORKER.stats.as_dict()


class ParallelEvaluator:
    """:class:`Evaluator` spread over ``workers`` spawned processes, each with its own copy of the pipeline.

    CUDA devices (when ``load.device`` is ``"cuda"``) are assigned round-robin: worker ``i`` gets ``cuda:i % n``.
    Results do not depend on the number of workers (each candidate's computation is the same).
    """

    def __init__(self, load: LoadSpec, spec: RunSpec, token_selection: TokenSelectionConfig,
                 references: list[torch.Tensor], workers: int, prefix_sharing: bool = True):
        import concurrent.futures as cf
        import multiprocessing as mp

        self.workers = workers
        self.stats = EvalStats()
        ctx = mp.get_context("spawn")
        self._pools = []
        n_cuda = torch.cuda.device_count() if load.device.startswith("cuda") else 0
        for i in range(workers):  # one single-process pool per worker, so each gets its own device
            dev = f"cuda:{i % n_cuda}" if n_cuda else load.device
            wl = LoadSpec(load.model, load.dtype, dev, load.threads, load.extra)
            self._pools.append(cf.ProcessPoolExecutor(1, mp_context=ctx, initializer=_worker_init,
                                                      initargs=(wl, spec, token_selection, references,
                                                                prefix_sharing)))

    def evaluate(self, genomes: Sequence[Sequence[float]]) -> list[float]:
        if not genomes:
            return []
        order = sorted(range(len(genomes)), key=lambda j: tuple(genomes[j]))
        per = math.ceil(len(order) / self.workers)
        chunks = [order[i:i + per] for i in range(0, len(order), per)]
        futures = [pool.submit(_worker_eval, [list(genomes[j]) for j in chunk])
                   for pool, chunk in zip(self._pools, chunks)]
        errors = [0.0] * len(genomes)
        for chunk, fut in zip(chunks, futures):
            errs, st = fut.result()
            for j, e in zip(chunk, errs):
                errors[j] = e
            self.stats.add(EvalStats(**st))
        return errors

    def close(self) -> None:
        for pool in self._pools:
            pool.shutdown(wait=True, cancel_futures=True)
