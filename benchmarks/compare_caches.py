"""vdit-accel against diffusers' built-in caches, side by side in one process (same model, seeds and steps).

    python benchmarks/compare_caches.py            # full run, < 20 min on 2 CPU cores; prints the tables
    python benchmarks/compare_caches.py --quick    # CI-size smoke run (tiny random model, seconds)
    python benchmarks/compare_caches.py --parts quality   # re-run one part; the other is carried over from the JSON

Two parts:

* **quality** — the bundled trained model (``vdit_accel.load_default_pipeline``), its default settings (64×64,
  17 frames, 20 steps, CFG): dense; vdit-accel at several target speedups and with reuse (TimeRipple) when it is
  installed; FirstBlockCache, PyramidAttentionBroadcast, TaylorSeer (identifiers that match Wan's ``attn1/attn2``),
  MagCache (calibrated on this model first) and FasterCache (recorded as "does not run" with its error on Wan's
  unbatched CFG). Measured: pipeline and transformer wall-clock (median of ``--reps`` runs, methods interleaved so
  load drift on a shared machine hits all of them alike) and PSNR / SSIM / LPIPS (if available) against dense.
* **speed** — a Wan2.1-1.3B-shaped ``WanTransformer3DModel`` (real widths: 12 heads × 128, FFN 8960, text dim 4096;
  ``--speed-layers`` layers, random weights) on a 5×30×28 = 4,200-token latent grid, driven by a real scheduler
  loop (``cache_context("cond")``, no CFG): measured wall-clock ratio against dense.

Writes ``caches.json``, ``caches.md`` and ``caches_speed_vs_psnr.png`` to ``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results")
BUILTIN = ("FirstBlockCache", "PyramidAttentionBroadcast", "TaylorSeer", "MagCache", "FasterCache")
# Caches that decide what to skip from the hidden states: their skip pattern on random weights (speed part) says
# nothing about the one on the trained model, so their speed there is not paired with the trained model's PSNR.
DATA_DEPENDENT = ("FirstBlockCache", "MagCache")
TIMES = ("pipeline_seconds", "transformer_seconds", "pipeline_cpu_seconds", "transformer_cpu_seconds")
# Reporting prompts of the bundled model: used by no search and no tuning (the search trains on
# results/search_train_prompts.json and checks on results/search_holdout_prompts.json).
REPORT_PROMPTS = ["a purple circle moving down on a striped background",
                  "a blue diamond moving right on a checkered background",
                  "a yellow square moving up on a black background",
                  "a red triangle moving left on a gray background"]
WAN_ATTN_IDENTIFIERS = [r"(transformer_)?blocks\.\d+\.attn\d"]  # TaylorSeer's defaults match nothing on Wan


@dataclass
class Method:
    family: str  # "dense" | "vdit-accel" | one of BUILTIN
    setting: str  # human-readable parameters
    enable: Callable[[], None]
    disable: Callable[[], None]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.family if self.family == "dense" else f"{self.family} ({self.setting})"


def _cache_method(family: str, setting: str, transformer, make_config: Callable[[], Any], **params) -> Method:
    return Method(family, setting, lambda: transformer.enable_cache(make_config()),
                  lambda: transformer.disable_cache() if transformer.is_cache_enabled else None, params)


def _reuse_config_cls():
    try:
        from vdit_accel.methods.score_reuse import ReuseConfig
    except ImportError:
        return None
    return ReuseConfig


def capture_magcache_ratios(run: Callable[[], Any]) -> list[list[float]]:
    """Run once with ``MagCacheConfig(calibrate=True)`` enabled; MagCache prints one ratio list per cache context at
    the end of the run (its public output), which is parsed here."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        run()
    text = buf.getvalue()
    lists = re.findall(r"Calibration Complete[^\n]*\n\s*(\[[^\]]*\])", text)
    if not lists:
        raise RuntimeError(f"MagCache calibration printed no ratios; output was: {text[-500:]!r}")
    return [json.loads(s) for s in lists]


# ================================================================================================ quality (pipeline)
def quality_methods(pipe, settings, quick: bool, log=print) -> tuple[list[Method], list[dict]]:
    """The methods compared on the pipeline, and the ones that could not even be set up (with the error)."""
    from diffusers import (FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig, PyramidAttentionBroadcastConfig,
                           TaylorSeerCacheConfig)

    from vdit_accel import AccelerationConfig, disable_acceleration, enable_acceleration
    from vdit_accel.schedule import dense_warmup_steps

    tr = pipe.transformer
    steps = settings.num_inference_steps
    methods = [Method("dense", "", lambda: None, lambda: None)]
    for s in ([2.0] if quick else [1.3, 1.5, 1.75, 2.0, 2.5]):
        methods.append(Method("vdit-accel", f"speedup={s}", (lambda s=s: enable_acceleration(pipe, AccelerationConfig(
            speedup=s))), lambda: disable_acceleration(pipe), dict(speedup=s)))
    from vdit_accel import BudgetSchedule

    for tol in ([0.25] if quick else [0.1, 0.25, 0.5]):  # calibration-free run-time decisions (0.25: the default)
        methods.append(Method("vdit-accel", f"auto, tolerance={tol}", (lambda tol=tol: enable_acceleration(
            pipe, AccelerationConfig(schedule=BudgetSchedule.auto(tolerance=tol)))), lambda: disable_acceleration(pipe),
            dict(schedule="auto", tolerance=tol)))
    reuse_cls = _reuse_config_cls()
    if reuse_cls is not None:
        # ReuseConfig(mode="emulate") reproduces reuse's effect on the output but runs dense attention: its quality
        # is measured, its time is not a speedup and it is left out of the speed/PSNR goal check and plot.
        methods.append(Method("vdit-accel", "speedup=2.0 + reuse (emulated)", lambda: enable_acceleration(
            pipe, AccelerationConfig(speedup=2.0, reuse=reuse_cls())), lambda: disable_acceleration(pipe),
            dict(speedup=2.0, reuse="ReuseConfig()", emulated=True)))
        methods.append(Method("vdit-accel", "reuse only (emulated)", lambda: enable_acceleration(
            pipe, AccelerationConfig(token_selection=None, reuse=reuse_cls())), lambda: disable_acceleration(pipe),
            dict(reuse="ReuseConfig()", token_selection=None, emulated=True)))
    for th in ([0.1] if quick else [0.05, 0.1, 0.2]):
        methods.append(_cache_method("FirstBlockCache", f"threshold={th}", tr,
                                     lambda th=th: FirstBlockCacheConfig(threshold=th), threshold=th))
    for sk in ([2] if quick else [2, 3, 4]):
        methods.append(_cache_method(
            "PyramidAttentionBroadcast", f"spatial skip={sk}, t∈(100,800)", tr,
            lambda sk=sk: PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=sk,
                                                          spatial_attention_timestep_skip_range=(100, 800),
                                                          current_timestep_callback=lambda: pipe.current_timestep),
            spatial_attention_block_skip_range=sk, spatial_attention_timestep_skip_range=[100, 800]))
    warm = dense_warmup_steps(steps)
    for ci in ([2] if quick else [2, 3, 5]):
        methods.append(_cache_method(
            "TaylorSeer", f"interval={ci}, order=1", tr,
            lambda ci=ci: TaylorSeerCacheConfig(cache_interval=ci, disable_cache_before_step=warm, max_order=1,
                                                taylor_factors_dtype=torch.float32,
                                                cache_identifiers=WAN_ATTN_IDENTIFIERS),
            cache_interval=ci, disable_cache_before_step=warm, max_order=1, cache_identifiers=WAN_ATTN_IDENTIFIERS))
    failed: list[dict] = []
    # MagCache: calibrate on this model, prompt and step count first (ratios are model-dependent).
    try:
        from vdit_accel.commands.compare import generate

        tr.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
        try:
            ratio_lists = capture_magcache_ratios(lambda: generate(pipe, settings, progress=False))
        finally:
            tr.disable_cache()
        ratios = ratio_lists[0]  # the first context to finish is "cond" (Wan calls cond, then uncond)
        log(f"[caches] MagCache calibrated: {len(ratio_lists)} context(s), cond ratios "
            f"{[round(r, 3) for r in ratios]}")
        for th in ([0.12] if quick else [0.06, 0.12, 0.24]):
            methods.append(_cache_method(
                "MagCache", f"threshold={th}", tr,
                lambda th=th: MagCacheConfig(threshold=th, num_inference_steps=steps, mag_ratios=list(ratios),
                                             retention_ratio=0.2, max_skip_steps=3),
                threshold=th, retention_ratio=0.2, max_skip_steps=3, mag_ratios=ratios))
    except Exception as e:  # noqa: BLE001 - recorded as a result
        failed.append(dict(family="MagCache", setting="calibrate=True", error=f"{type(e).__name__}: {e}"))
    methods.append(_cache_method(
        "FasterCache", "spatial skip=2", tr,
        lambda: FasterCacheConfig(spatial_attention_block_skip_range=2,
                                  spatial_attention_timestep_skip_range=(-1, 681),
                                  current_timestep_callback=lambda: pipe.current_timestep,
                                  attention_weight_callback=lambda _: 0.5, is_guidance_distilled=False),
        spatial_attention_block_skip_range=2))
    return methods, failed


class TransformerTimer:
    """Wall-clock and process CPU seconds spent inside ``transformer(...)`` calls (torch forward pre/post hooks).

    CPU time (``time.process_time``, all threads of this process) does not grow when other processes compete for the
    cores, so on a shared machine its ratio is the steadier estimate of what the wall-clock ratio would be alone."""

    def __init__(self, module: torch.nn.Module):
        self.seconds = self.cpu_seconds = 0.0
        self._t0 = self._c0 = None
        self._handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _pre(self, *_):
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def _post(self, *_):
        self.seconds += time.perf_counter() - self._t0
        self.cpu_seconds += time.process_time() - self._c0

    def remove(self):
        for h in self._handles:
            h.remove()


def run_quality(model: str, prompts: list[str], reps: int, quick: bool, steps: int | None, threads: int = 1,
                log=print) -> dict:
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run_quality(model, prompts, reps, quick, steps, log)
    finally:
        torch.set_num_threads(previous_threads)


def _run_quality(model: str, prompts: list[str], reps: int, quick: bool, steps: int | None, log=print) -> dict:
    from vdit_accel.commands.compare import GenerationSettings, generate
    from vdit_accel.commands.loading import TINY_MODELS, load_pipeline
    from vdit_accel.quality import compare_videos

    pipe = load_pipeline(model)
    if model in TINY_MODELS:  # tiny random pipelines (smoke runs)
        gen_kw = dict(height=32, width=32, num_frames=9, num_inference_steps=6, guidance_scale=5.0,
                      max_sequence_length=16)
    else:  # the bundled model's settings (also used for a folder or hub id given with --model)
        from vdit_accel.tiny_model import DEFAULT_GENERATION_KWARGS as gen_kw
    gen_kw = dict(gen_kw)
    if steps:
        gen_kw["num_inference_steps"] = steps
    n_steps = gen_kw.pop("num_inference_steps")
    settings = [GenerationSettings(prompt=p, seed=i, num_inference_steps=n_steps, **gen_kw)
                for i, p in enumerate(prompts)]
    generate(pipe, settings[0], progress=False)  # warm-up (allocator, first-call costs)
    methods, failed = quality_methods(pipe, settings[0], quick, log)
    timer = TransformerTimer(pipe.transformer)
    rows: dict[str, dict] = {}
    outputs: dict[str, list] = {}
    try:
        for rep in range(reps):
            # the order alternates between repetitions: a method's time does not depend on its place in the list
            for m in (methods if rep % 2 == 0 else methods[::-1]):
                if m.label in rows and rows[m.label]["status"] != "ok":
                    continue
                row = rows.setdefault(m.label, dict(family=m.family, setting=m.setting, params=m.params,
                                                    status="ok", **{k: [[] for _ in prompts] for k in TIMES}))
                try:
                    m.enable()
                    try:
                        for pi, s in enumerate(settings):
                            timer.seconds = timer.cpu_seconds = 0.0
                            c0 = time.process_time()
                            g = generate(pipe, s, progress=False)
                            row["pipeline_cpu_seconds"][pi].append(time.process_time() - c0)
                            row["pipeline_seconds"][pi].append(g.seconds)
                            row["transformer_seconds"][pi].append(timer.seconds)
                            row["transformer_cpu_seconds"][pi].append(timer.cpu_seconds)
                            if rep == 0:
                                outputs.setdefault(m.label, []).append(g.frames)
                    finally:
                        m.disable()
                except Exception as e:  # noqa: BLE001 - a cache that cannot run on this model is a result
                    row.update(status="does not run", error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
                    log(f"[caches] {m.label}: does not run: {row['error']}")
            log(f"[caches] quality rep {rep + 1}/{reps} done")
    finally:
        timer.remove()
    for f in failed:
        rows[f"{f['family']} ({f['setting']})"] = dict(family=f["family"], setting=f["setting"], params={},
                                                       status="does not run", error=f["error"])
    total = {k: sum(statistics.median(t) for t in rows["dense"][k]) for k in TIMES}
    for label, row in rows.items():
        if row["status"] != "ok":
            continue
        for k in TIMES:
            mine = sum(statistics.median(t) for t in row[k])
            row[f"{k}_median"] = mine
            row[k.replace("seconds", "speedup")] = total[k] / mine
        metrics = [compare_videos(d, o) for d, o in zip(outputs["dense"], outputs[label])]
        psnrs = [mm["psnr"] for mm in metrics]
        row["identical_to_dense"] = all(p == float("inf") for p in psnrs)
        finite = [p for p in psnrs if p != float("inf")]
        row["psnr"] = None if row["identical_to_dense"] else (statistics.mean(finite) if len(finite) == len(psnrs)
                                                              else None)
        row["ssim"] = statistics.mean(mm["ssim"] for mm in metrics)
        lp = [mm["lpips"] for mm in metrics]
        row["lpips"] = statistics.mean(lp) if all(v is not None for v in lp) else None
        row["lpips_unavailable_reason"] = metrics[0]["lpips_unavailable_reason"]
    return dict(model=model, prompts=prompts, seeds=list(range(len(prompts))), num_inference_steps=n_steps,
                generation_kwargs=gen_kw, reps=reps, rows=rows,
                torch_threads=torch.get_num_threads(),
                timing="median over reps of each prompt's time, summed over prompts; methods interleaved per rep, in "
                       "the listed order on even reps and reversed on odd ones; "
                       "transformer time = inside transformer(...) calls; CPU time = process CPU seconds (all "
                       "threads), which other processes' load does not inflate")


# ================================================================================================ speed (Wan-1.3B)
WAN13B_KW = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                 out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", eps=1e-6)
WAN13B_LATENT = (1, 16, 5, 60, 56)  # → grid 5×30×28 = 4,200 video tokens
TINY_KW = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
               text_dim=32, freq_dim=256, ffn_dim=32, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
               eps=1e-6, rope_max_seq_len=32)
TINY_LATENT = (1, 16, 3, 8, 8)


def run_speed(quick: bool, layers: int, steps: int, reps: int, text_len: int = 64, log=print) -> dict:
    """Every method on its own copy of one transformer (same weights), advanced step by step in lockstep: step i of
    every method runs before step i+1 of any, so a change of load on a shared machine hits all methods alike."""
    import copy

    from diffusers import (FasterCacheConfig, FirstBlockCacheConfig, FlowMatchEulerDiscreteScheduler, MagCacheConfig,
                           PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig, WanTransformer3DModel)

    from vdit_accel import AccelerationConfig, set_step
    from vdit_accel.api import accelerate_transformer
    from vdit_accel.schedule import dense_warmup_steps

    torch.manual_seed(0)
    kw, latent_shape = (TINY_KW, TINY_LATENT) if quick else (WAN13B_KW, WAN13B_LATENT)
    base = WanTransformer3DModel(num_layers=layers, **kw).eval()
    latents0 = torch.randn(latent_shape)
    text = torch.randn(1, text_len, kw["text_dim"])
    grid = (latent_shape[2], latent_shape[3] // 2, latent_shape[4] // 2)
    warm = dense_warmup_steps(steps)

    def loop(tr, before_step=None, clock=None):
        """Generator: runs one denoising step per ``next()`` and yields its wall-clock seconds."""
        scheduler = FlowMatchEulerDiscreteScheduler(shift=5.0)  # one per run: it counts its own steps
        scheduler.set_timesteps(steps)
        lat = latents0.clone()
        for i, t in enumerate(scheduler.timesteps):
            t0, c0 = time.perf_counter(), time.process_time()
            if clock is not None:
                clock["t"] = t
            if before_step is not None:
                before_step(i)
            with torch.inference_mode(), tr.cache_context("cond"):
                out = tr(hidden_states=lat, timestep=t.expand(1), encoder_hidden_states=text, return_dict=False)[0]
            lat = scheduler.step(out, t, lat, return_dict=False)[0]
            yield time.perf_counter() - t0, time.process_time() - c0
        tr._reset_stateful_cache()

    @dataclass
    class Runner:
        family: str
        setting: str
        tr: torch.nn.Module
        enable: Callable[[], None] = lambda: None
        disable: Callable[[], None] = lambda: None
        before_step: Callable[[int], None] | None = None
        clock: dict = field(default_factory=dict)
        params: dict = field(default_factory=dict)

        @property
        def label(self):
            return self.family if self.family == "dense" else f"{self.family} ({self.setting})"

    runners: list[Runner] = [Runner("dense", "", base)]

    def vdit(speedup: float) -> Runner:
        r = Runner("vdit-accel", f"speedup={speedup}", copy.deepcopy(base), params=dict(speedup=speedup))
        cfg = AccelerationConfig(speedup=speedup)
        handle = {}
        r.enable = lambda: handle.update(h=accelerate_transformer(r.tr, cfg, cfg.schedule, step_resolver=None))
        r.disable = lambda: handle.pop("h").remove()
        r.before_step = lambda i: set_step(r.tr, i, steps)
        return r

    def cache(family: str, setting: str, make_config: Callable[[dict], Any], **params) -> Runner:
        r = Runner(family, setting, copy.deepcopy(base), params=params)
        r.enable = lambda: r.tr.enable_cache(make_config(r.clock))
        r.disable = lambda: r.tr.disable_cache() if r.tr.is_cache_enabled else None
        return r

    runners += [vdit(s) for s in ([2.0] if quick else [2.0, 3.0])]
    runners += [
        cache("FirstBlockCache", "threshold=0.1", lambda c: FirstBlockCacheConfig(threshold=0.1), threshold=0.1),
        cache("PyramidAttentionBroadcast", "spatial skip=2, t∈(100,800)",
              lambda c: PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                                        spatial_attention_timestep_skip_range=(100, 800),
                                                        current_timestep_callback=lambda: c["t"]),
              spatial_attention_block_skip_range=2),
        cache("TaylorSeer", "interval=2, order=1",
              lambda c: TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=warm, max_order=1,
                                              taylor_factors_dtype=torch.float32,
                                              cache_identifiers=WAN_ATTN_IDENTIFIERS),
              cache_interval=2, disable_cache_before_step=warm),
    ]
    rows: dict[str, dict] = {}
    log(f"[caches] speed: {'tiny' if quick else 'Wan2.1-1.3B-shaped'} transformer, {layers} layers, grid "
        f"{grid[0]}×{grid[1]}×{grid[2]} = {grid[0] * grid[1] * grid[2]} tokens, {steps} steps, {reps} rep(s)")
    t_start = time.perf_counter()
    with torch.inference_mode():  # warm-up: one call (a whole loop costs minutes at this size)
        base(hidden_states=latents0, timestep=torch.tensor([999]), encoder_hidden_states=text, return_dict=False)
    log(f"[caches] speed warm-up call {time.perf_counter() - t_start:.1f}s")
    # MagCache: calibrate on this transformer first (its ratios are model-dependent), untimed.
    mag = Runner("MagCache", "threshold=0.12", copy.deepcopy(base))
    try:
        mag.tr.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
        try:
            ratios = capture_magcache_ratios(lambda: list(loop(mag.tr)))[0]
        finally:
            mag.tr.disable_cache()
        mag.params = dict(threshold=0.12, retention_ratio=0.2, max_skip_steps=3, mag_ratios=ratios)
        mag.enable = lambda: mag.tr.enable_cache(MagCacheConfig(threshold=0.12, num_inference_steps=steps,
                                                                mag_ratios=list(ratios), retention_ratio=0.2,
                                                                max_skip_steps=3))
        mag.disable = lambda: mag.tr.disable_cache()
        runners.append(mag)
        log(f"[caches] speed MagCache calibrated {time.perf_counter() - t_start:.1f}s: {[round(r, 3) for r in ratios]}")
    except Exception as e:  # noqa: BLE001
        rows["MagCache (calibrate=True)"] = dict(family="MagCache", setting="calibrate=True", status="does not run",
                                                 error=f"{type(e).__name__}: {e}")
    runners.append(cache("FasterCache", "spatial skip=2", lambda c: FasterCacheConfig(
        spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 681),
        current_timestep_callback=lambda: c["t"], attention_weight_callback=lambda _: 0.5,
        is_guidance_distilled=False)))
    for r in runners:
        rows[r.label] = dict(family=r.family, setting=r.setting, status="ok", seconds=[], params=r.params)
    for rep in range(reps):
        live = {}
        for r in runners:
            if rows[r.label]["status"] != "ok":
                continue
            try:
                r.enable()
                live[r.label] = (r, loop(r.tr, r.before_step, r.clock), [])
            except Exception as e:  # noqa: BLE001
                rows[r.label].update(status="does not run", error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
        for i in range(steps):
            for label in list(live):
                r, gen, times = live[label]
                try:
                    times.append(next(gen))
                except Exception as e:  # noqa: BLE001 - a cache that cannot run here is a result
                    rows[label].update(status="does not run",
                                       error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
                    log(f"[caches] speed {label}: does not run: {rows[label]['error']}")
                    r.disable()
                    del live[label]
            log(f"[caches] speed rep {rep + 1} step {i + 1}/{steps}: "
                + ", ".join(f"{lb.split(' (')[0][:12]} {v[2][-1][0]:.1f}s" for lb, v in live.items()))
        for label, (r, gen, times) in live.items():
            next(gen, None)  # runs the generator's cleanup (stateful-hook reset)
            r.disable()
            rows[label]["seconds"].append(sum(w for w, _ in times))
            rows[label].setdefault("cpu_seconds", []).append(sum(c for _, c in times))
            rows[label].setdefault("step_seconds", []).append([w for w, _ in times])
            rows[label].setdefault("step_cpu_seconds", []).append([c for _, c in times])
    dense_s = statistics.median(rows["dense"]["seconds"])
    dense_c = statistics.median(rows["dense"]["cpu_seconds"])
    for row in rows.values():
        if row["status"] == "ok":
            row["seconds_median"] = statistics.median(row["seconds"])
            row["speedup"] = dense_s / row["seconds_median"]
            row["cpu_seconds_median"] = statistics.median(row["cpu_seconds"])
            row["cpu_speedup"] = dense_c / row["cpu_seconds_median"]
    return dict(transformer="WanTransformer3DModel", config={**kw, "num_layers": layers},
                latent_shape=list(latent_shape), grid=list(grid), video_tokens=grid[0] * grid[1] * grid[2],
                text_tokens=text_len, steps=steps, reps=reps, cfg=False, weights="random (torch.manual_seed(0))",
                scheduler="FlowMatchEulerDiscreteScheduler(shift=5.0)", rows=rows,
                timing="wall-clock of each method's step loop (sum of its steps); every method runs on its own "
                       "copy of the same transformer and all advance in lockstep, step i of every method before "
                       "step i+1 of any, so load changes on the shared machine hit all of them alike; median over "
                       "reps")



# ================================================================================================ report
def _psnr_value(row: dict) -> float | None:
    if row.get("identical_to_dense"):
        return float("inf")
    return row.get("psnr")


def pareto_front(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Points (speedup, psnr, label) not beaten on both axes by another point, by increasing speedup."""
    front = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and (q[0], q[1]) != (p[0], p[1])
                                          for q in points)]
    return sorted(front)


def _interp(xs: list[float], ys: list[float], x: float) -> float | None:
    pairs = sorted(zip(xs, ys))
    for (x0, y0), (x1, y1) in zip(pairs, pairs[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if pairs and pairs[0][0] == x:
        return pairs[0][1]
    return None


def goal_check(points: dict[str, tuple[float, float]], ours_prefix: str = "vdit-accel") -> list[dict]:
    """For each built-in cache point: the vdit-accel PSNR at its speedup and the vdit-accel speedup at its PSNR,
    linearly interpolated on vdit-accel's measured Pareto front (computed from the measured points)."""
    ours = [(s, p, k) for k, (s, p) in points.items() if k.startswith(ours_prefix) and p is not None]
    front = pareto_front(ours)
    fs, fp = [p[0] for p in front], [min(p[1], 1e9) for p in front]
    out = []
    for label, (s, p) in points.items():
        if label.startswith(ours_prefix) or label == "dense" or p is None:
            continue
        psnr_at = _interp(fs, fp, s)
        speed_at = _interp(fp, fs, min(p, 1e9)) if len(front) > 1 else None
        dominated_by = [k for (os_, op, k) in ours if os_ >= s and op >= p]
        dominates = [k for (os_, op, k) in ours if s >= os_ and p >= op]
        out.append(dict(cache=label, speedup=s, psnr=p, ours_psnr_at_equal_speedup=psnr_at,
                        ours_speedup_at_equal_psnr=speed_at,
                        equal_speedup_reached=None if psnr_at is None else psnr_at > p,
                        equal_psnr_reached=None if speed_at is None else speed_at > s,
                        dominated_by=dominated_by, dominates=dominates))
    return out


def _f(x: Any, nd: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return "identical" if x == float("inf") else f"{x:.{nd}f}"
    return str(x)


def _goal_lines(checks: list[dict], what: str) -> list[str]:
    lines = [f"| built-in cache ({what}) | its speedup | its PSNR | ours: PSNR at equal speedup | "
             f"ours: speedup at equal PSNR | goal at equal speedup | goal at equal PSNR | measured points that beat "
             f"it on both axes / that it beats |", "|---|---|---|---|---|---|---|---|"]
    yes_no = {True: "reached", False: "**not reached**", None: "not covered by our measured range"}
    for c in checks:
        lines.append(f"| {c['cache']} | {_f(c['speedup'])}× | {_f(c['psnr'])} | {_f(c['ours_psnr_at_equal_speedup'])}"
                     f" | {_f(c['ours_speedup_at_equal_psnr'])} | {yes_no[c['equal_speedup_reached']]} | "
                     f"{yes_no[c['equal_psnr_reached']]} | {', '.join(c['dominated_by']) or 'none'} / "
                     f"{', '.join(c['dominates']) or 'none'} |")
    return lines


def paired_points(result: dict, key: str = "speedup") -> dict[str, tuple[float, float]]:
    """(speedup on the Wan-1.3B-shaped transformer, PSNR on the bundled model) for settings measured in both."""
    q, s = result.get("quality"), result.get("speed")
    if not q or not s:
        return {}
    out = {}
    for label, srow in s["rows"].items():
        qrow = q["rows"].get(label)
        if (srow.get("status") == "ok" and qrow and qrow.get("status") == "ok" and label != "dense"
                and srow["family"] not in DATA_DEPENDENT and srow.get(key) is not None):
            out[label] = (srow[key], _psnr_value(qrow))
    return out


def quality_points(result: dict, key: str = "transformer_speedup") -> dict[str, tuple[float, float]]:
    q = result.get("quality") or {"rows": {}}
    return {k: (r[key], _psnr_value(r)) for k, r in q["rows"].items()
            if r.get("status") == "ok" and k != "dense" and not r.get("params", {}).get("emulated")}


def render_markdown(result: dict) -> str:
    env = result["environment"]
    lines = ["# vdit-accel vs diffusers' built-in caches", "",
             f"Command: `{result['command']}` — {result['finished_utc']} UTC, {result['total_seconds']:.0f} s in "
             f"all.",
             f"Machine: {env['cpu']} ({env['cores']} cores, torch threads {env['torch_threads']}), {env['platform']}; "
             f"torch {env['torch']}, diffusers {env['diffusers']}; load average at start {env['load_start']}, at end "
             f"{env['load_end']} (a shared machine: timings are noisy).", ""]
    q = result.get("quality")
    if q:
        what = ("the bundled trained model" if q["model"] in (None, "", "default") else
                "a random-weight model: plumbing only, these PSNR values mean nothing"
                if q["model"] in ("tiny-wan", "tiny-cogvideox") else "loaded with --model")
        lines += [f"## Quality and speed on `{q['model']}` ({what})", "",
                  f"{q['num_inference_steps']} steps, {q['generation_kwargs']}, prompts {q['prompts']} (seeds "
                  f"{q['seeds']}), {q['reps']} timed run(s) per prompt and method. {q['timing']}."
                  + (f" {q['carried_over']}" if q.get("carried_over") else ""), "",
                  "| method | setting | transformer speedup, wall-clock | transformer speedup, CPU time | "
                  "pipeline speedup, wall-clock | pipeline s | PSNR vs dense (dB) | SSIM | LPIPS |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for label, r in q["rows"].items():
            if r["status"] != "ok":
                lines.append(f"| {r['family']} | {r['setting']} | does not run: {r['error']} | | | | | | |")
                continue
            lines.append(f"| {r['family']} | {r['setting'] or '—'} | {r['transformer_speedup']:.2f}× | "
                         f"{r['transformer_cpu_speedup']:.2f}× | "
                         f"{r['pipeline_speedup']:.2f}× | {r['pipeline_seconds_median']:.2f} | "
                         f"{_f(_psnr_value(r))} | {r['ssim']:.4f} | {_f(r['lpips'], 4)} |")
        lp = next((r.get("lpips_unavailable_reason") for r in q["rows"].values() if r.get("lpips_unavailable_reason")),
                  None)
        if lp:
            lines += ["", f"LPIPS not computed: {lp}."]
    s = result.get("speed")
    if s:
        lines += ["", f"## Speed on a Wan2.1-1.3B-shaped transformer ({s['config']['num_layers']} layers, "
                      f"{s['video_tokens']} video tokens, {s['steps']} steps, no CFG, random weights)", "",
                  s["timing"] + "." + (f" {s['carried_over']}" if s.get("carried_over") else ""), "",
                  "| method | setting | seconds (runs) | speedup, wall-clock | speedup, CPU time |",
                  "|---|---|---|---|---|"]
        for label, r in s["rows"].items():
            if r["status"] != "ok":
                lines.append(f"| {r['family']} | {r['setting']} | does not run: {r['error']} | | |")
                continue
            runs = ", ".join(f"{x:.3g}" for x in r["seconds"])
            lines.append(f"| {r['family']} | {r['setting'] or '—'} | {r['seconds_median']:.3g} ({runs}) | "
                         f"{r['speedup']:.2f}× | {_f(r.get('cpu_speedup'))}{'×' if r.get('cpu_speedup') else ''} |")
        first = [r["step_seconds"][0][0] for r in s["rows"].values() if r.get("step_seconds")]
        if len(first) > 1:
            lines += ["", f"Timing noise: step 1 does the same (dense) work in every method; its measured times range "
                          f"{min(first):.3g}–{max(first):.3g} s (median {statistics.median(first):.3g} s)."]
    g = result.get("goal", {})
    if g:
        lines += ["", "## Goal: at equal measured speedup higher PSNR than every built-in cache; at equal PSNR higher "
                      "speedup", "",
                  "Computed from the measured points: our value is linearly interpolated on vdit-accel's measured "
                  "Pareto front (speedup, PSNR); \"not covered\" means the cache's speedup (or PSNR) lies outside "
                  "the range our measured points span.", ""]
        if g.get("bundled"):
            lines += _goal_lines(g["bundled"], "bundled model, transformer wall-clock") + [""]
        if g.get("bundled_cpu"):
            lines += _goal_lines(g["bundled_cpu"], "bundled model, transformer CPU time") + [""]
        if g.get("paired"):
            lines += ["Speed on the Wan2.1-1.3B shape paired with PSNR on the bundled model, for the settings measured "
                      "in both (their skip pattern depends only on the step, not on the data). FirstBlockCache and "
                      "MagCache are left out of this pairing: they decide what to skip from the hidden states, so on "
                      "random weights they skip differently than on the trained model (MagCache's ratios calibrated "
                      "on the random transformer are "
                      + str([round(x, 3) for x in next((r["params"].get("mag_ratios", []) for r in s["rows"].values()
                                                        if r["family"] == "MagCache" and r.get("params")), [])])
                      + ").", ""]
            lines += _goal_lines(g["paired"], "Wan-1.3B wall-clock speed, bundled PSNR") + [""]
        if g.get("paired_cpu"):
            lines += _goal_lines(g["paired_cpu"], "Wan-1.3B CPU-time speed, bundled PSNR") + [""]
    lines += ["", "![speed vs PSNR](caches_speed_vs_psnr.png)", ""]
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    qmodel = (result.get("quality") or {}).get("model")
    qname = ("bundled model" if qmodel in (None, "", "default") else f"{qmodel} (random weights)"
             if qmodel in ("tiny-wan", "tiny-cogvideox") else os.path.basename(str(qmodel).rstrip("/")))
    panels = [(f"{qname}: transformer speedup, wall-clock (measured)", quality_points(result)),
              (f"{qname}: transformer speedup, CPU time (measured)",
               quality_points(result, "transformer_cpu_speedup")),
              ("Wan2.1-1.3B shape: speedup (measured)", paired_points(result))]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 5), squeeze=False)
    markers = {"vdit-accel": "o", "FirstBlockCache": "s", "PyramidAttentionBroadcast": "^", "TaylorSeer": "D",
               "MagCache": "v", "FasterCache": "x"}
    colors = dict(zip(markers, ["C0", "C1", "C2", "C3", "C4", "C5"]))
    for ax, (title, pts) in zip(axes[0], panels):
        finite = [p for _, p in pts.values() if p is not None and p != float("inf")]
        top = (max(finite) + 3) if finite else 60.0
        for fam, mk in markers.items():
            fam_pts = sorted((s, top if p == float("inf") else p, k) for k, (s, p) in pts.items()
                             if k.startswith(fam) and p is not None)
            if not fam_pts:
                continue
            ax.plot([p[0] for p in fam_pts], [p[1] for p in fam_pts], marker=mk, linestyle="-" if fam ==
                    "vdit-accel" else "--", label=fam, markersize=7, color=colors[fam])
            for sx, py, k in fam_pts:
                ax.annotate(k[len(fam):].strip(" ()")[:24], (sx, py), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
        ax.axvline(1.0, color="gray", lw=0.5)
        ax.set_xlabel(title)
        ax.set_ylabel(f"PSNR vs dense (dB), {qname}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("vdit-accel vs diffusers caches (up and right is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def environment(load_start) -> dict:
    import diffusers

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return dict(cpu=cpu, cores=os.cpu_count(), torch_threads=torch.get_num_threads(), platform=platform.platform(),
                python=platform.python_version(), torch=torch.__version__, diffusers=diffusers.__version__,
                load_start=[round(x, 2) for x in load_start], load_end=[round(x, 2) for x in os.getloadavg()])


def _json_safe(obj):
    if isinstance(obj, float) and obj in (float("inf"), float("-inf")):
        return "inf" if obj > 0 else "-inf"
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI smoke run: tiny random models, one setting per cache")
    p.add_argument("--parts", nargs="+", choices=["quality", "speed"], default=["quality", "speed"],
                   help="which parts to run; a part not run is carried over from the existing caches.json")
    p.add_argument("--model", default=None, help="quality model (default: 'default' = bundled; --quick: tiny-wan)")
    p.add_argument("--prompts", type=int, default=None,
                   help="number of the bundled model's example prompts (quality; default 2, quick 1)")
    p.add_argument("--reps", type=int, default=None, help="timed runs per prompt and method (default 4; quick 1)")
    p.add_argument("--steps", type=int, default=None, help="quality steps (default: the model's default)")
    p.add_argument("--quality-threads", type=int, default=1,
                   help="torch threads for the quality part (its model is tiny; one thread keeps timings steadier "
                        "on a shared machine)")
    p.add_argument("--speed-layers", type=int, default=2)
    p.add_argument("--speed-steps", type=int, default=6)
    p.add_argument("--speed-reps", type=int, default=1,
                   help="timed runs per method on the Wan-1.3B shape (each dense run takes minutes on 2 cores)")
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--name", default="caches", help="file stem of the results (e.g. caches_50steps)")
    args = p.parse_args(argv)
    for name in ("prompts", "reps", "steps", "quality_threads", "speed_layers", "speed_steps", "speed_reps"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    model = args.model or ("tiny-wan" if args.quick else "default")
    reps = args.reps or (1 if args.quick else 4)  # even: the method order alternates between repetitions
    n_prompts = args.prompts or (1 if args.quick else 2)
    t0, load_start = time.perf_counter(), os.getloadavg()
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, f"{args.name}.json")
    previous = {}
    if set(args.parts) != {"quality", "speed"} and os.path.isfile(json_path):
        with open(json_path) as f:
            previous = json.load(f)
    result: dict[str, Any] = dict(command="python benchmarks/compare_caches.py " + " ".join(sys.argv[1:] if argv is None
                                                                                          else argv),
                                  quick=args.quick)
    if "quality" in args.parts:
        if model in (None, "", "default"):
            from vdit_accel.commands.loading import bundled_model_available

            if not bundled_model_available():
                raise SystemExit("The bundled model is missing (vdit_accel/assets/tiny-shapes-t2v); train it, or pass "
                                 "--model tiny-wan (random weights: plumbing only, the PSNR means nothing).")
            prompts = REPORT_PROMPTS
        elif model in ("tiny-wan", "tiny-cogvideox"):
            prompts = ["a red car on the beach", "a dog running in the city", "a robot flying at night"]
        else:
            from vdit_accel.tiny_model import EXAMPLE_PROMPTS as prompts
        result["quality"] = run_quality(model, list(prompts[:n_prompts]), reps, args.quick, args.steps,
                                        args.quality_threads)
    elif previous.get("quality"):
        result["quality"] = dict(previous["quality"], carried_over=f"(Carried over from `{previous.get('command')}` "
                                                                  f"of {previous.get('finished_utc')} UTC.)")
    if "speed" in args.parts:
        result["speed"] = run_speed(args.quick, args.speed_layers, 5 if args.quick and args.speed_steps == 6 else
                                    args.speed_steps, args.speed_reps)
    elif previous.get("speed"):
        result["speed"] = dict(previous["speed"], carried_over=f"(Carried over from `{previous.get('command')}` "
                                                              f"of {previous.get('finished_utc')} UTC.)")
    result = json.loads(json.dumps(result, default=float))  # plain JSON types ("inf" strings restored below)
    result["goal"] = dict(bundled=goal_check(quality_points(result)),
                          bundled_cpu=goal_check(quality_points(result, "transformer_cpu_speedup")),
                          paired=goal_check(paired_points(result)),
                          paired_cpu=goal_check(paired_points(result, "cpu_speedup")))
    result["environment"] = environment(load_start)
    result["total_seconds"] = time.perf_counter() - t0
    result["finished_utc"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    md = render_markdown(result)
    with open(json_path, "w") as f:
        json.dump(_json_safe(result), f, indent=1)
    with open(os.path.join(args.out, f"{args.name}.md"), "w") as f:
        f.write(md)
    plot(result, os.path.join(args.out, f"{args.name}_speed_vs_psnr.png"))
    print(md)
    print(f"[caches] wrote {json_path}, {args.name}.md, {args.name}_speed_vs_psnr.png in "
          f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
