"""The demo page: :func:`build_app` lays out the Gradio page (inputs, both videos, metrics, the per-step budget chart,
the heatmap of recomputed tokens) and :func:`run_callback` turns one click into one :meth:`DemoRunner.run`, showing
bad input and failures in the page. Gradio is imported only inside these functions.

>>> from vdit_accel.app import build_app
>>> build_app("tiny-wan").queue().launch(server_name="127.0.0.1")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .heatmap import heatmap_summary
from .runner import DemoInputError, DemoRequest, DemoResult, DemoRunner, Progress, score_reuse_available

logger = logging.getLogger(__name__)


def _fmt(value: Any, spec: str, unit: str = "") -> str:
    if value is None:
        return "n/a"
    value = float(value)
    if value == float("inf"):
        return "∞ (identical)"
    return f"{value:{spec}}{unit}"


def metrics_markdown(result: DemoResult) -> str:
    q = result.metrics
    lpips = _fmt(q.get("lpips"), ".4f") if q.get("lpips") is not None else "n/a"
    computed = result.acceleration.get("computed_token_fraction")
    dense_note = " (cached)" if result.dense_cached else ""
    return "\n".join([
        "| | Dense | Accelerated |",
        "|---|---|---|",
        f"| Wall-clock | {result.dense.seconds:.2f} s{dense_note} | {result.accelerated.seconds:.2f} s |",
        "",
        f"**Speedup: {result.speedup:.2f}×** measured (whole pipeline call, one run each, same process); "
        f"{_fmt(result.predicted_speedup, '.2f', '×')} predicted for the transformer by the cost model. "
        f"Tokens computed: {_fmt(computed and computed * 100, '.0f', '%')} of dense. "
        f"Schedule: {result.schedule_source}.",
        "",
        f"**PSNR** {_fmt(q.get('psnr'), '.2f', ' dB')} · **SSIM** {_fmt(q.get('ssim'), '.4f')} · "
        f"**LPIPS** {lpips} · **Temporal flicker** (VBench, higher = steadier) dense "
        f"{_fmt(q.get('flicker_reference'), '.4f')} / accelerated {_fmt(q.get('flicker_candidate'), '.4f')}",
    ])


def dense_source_markdown(result: DemoResult) -> str:
    if result.dense_cached:
        return (f"Dense video: **from cache** (same model, prompt, seed, steps, size and guidance; it took "
                f"{result.dense.seconds:.2f} s when generated). Only the accelerated side was re-run.")
    return f"Dense video: **generated in this run** ({result.dense.seconds:.2f} s)."


def budget_figure(result: DemoResult):
    """Bars: the scheduled budget per step; dots: the fraction of tokens each step actually computed."""
    from matplotlib.figure import Figure

    budgets = result.acceleration["budgets"]
    steps = result.acceleration.get("steps", [])
    measured = [s["ffn_tokens"] / s["dense_tokens"] if s.get("dense_tokens") else None for s in steps]
    fig = Figure(figsize=(5.0, 3.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    xs = list(range(1, len(budgets) + 1))
    ax.bar(xs, budgets, color="#6366f1", alpha=0.75, label="scheduled budget")
    mx = [s["step"] + 1 for s, m in zip(steps, measured) if m is not None]
    ax.plot(mx, [m for m in measured if m is not None], "o", color="#f97316", label="tokens computed")
    ax.axhline(1.0, color="#888", lw=0.8, ls="--")
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("denoising step")
    ax.set_ylabel("fraction of tokens")
    ax.set_xticks(xs if len(xs) <= 25 else xs[::max(1, len(xs) // 10)])
    ax.set_title("Per-step token budget", fontsize=10)
    fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    return fig


HEATMAP_HELP = (
    "**Recomputed tokens.** One video frame per denoising step (the caption gives the step, its budget and the "
    "share of tokens computed); the tiles are the latent frames, left to right, each latent token drawn as the "
    "square of the video it covers. Colour = share of block executions at that step (all blocks × guidance "
    "branches) that recomputed the token: black = every block reused its cached result, pale yellow = every block "
    "recomputed it. Dense steps are all yellow; the budget chart's dots are the per-step means of this map."
)


def build_app(pipe_or_model: Any = "default", model_name: str | None = None, out_dir: str | None = None,
              warm_up: bool = True):
    """Build the demo page (a ``gr.Blocks``) for a pipeline or a ``--model`` name (see ``load_pipeline``).

    Args:
        pipe_or_model: a supported pipeline, or ``"default"`` (bundled model), ``"tiny-wan"``, a folder or hub id.
        model_name (`str`, *optional*): the name shown and used in the dense cache key when a pipeline is given.
        out_dir (`str`, *optional*): where generated mp4 files are written (default: a temporary folder).
        warm_up (`bool`, defaults to True): run a 3-step dense and accelerated generation before serving, so the
            first click's timings are not inflated by one-time start-up costs.

    Example:
        >>> demo = build_app("tiny-wan")                                       # doctest: +SKIP
        >>> demo.queue().launch(server_name="127.0.0.1", server_port=7860)     # doctest: +SKIP
    """
    try:
        import gradio as gr
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("The demo needs Gradio: pip install 'vdit-accel[app]'") from e

    if isinstance(pipe_or_model, str):
        from ..commands.loading import load_pipeline

        model_name = model_name or pipe_or_model
        pipe = load_pipeline(pipe_or_model)
    else:
        pipe = pipe_or_model
    runner = DemoRunner(pipe, model_name or type(pipe).__name__, out_dir=out_dir)
    if warm_up:
        runner.warm_up()
    d, rules = runner.defaults, runner.rules
    reuse_ok = score_reuse_available()

    # delete_cache: Gradio's copies of served files older than a day are removed every hour
    with gr.Blocks(title="vdit-accel demo", delete_cache=(3600, 86400)) as demo:
        gr.Markdown(f"# vdit-accel: dense vs accelerated\nModel: `{runner.model}` ({type(pipe).__name__}). "
                    "One click generates the video densely and with acceleration, same seed, and compares them.")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt",
                                    placeholder="a red circle moving right on a black background")
                negative = gr.Textbox(label="Negative prompt", elem_id="negative-prompt")
                with gr.Row():
                    # text, not gr.Number: the browser holds numbers as doubles, which cannot carry every seed up to
                    # 2**63 - 1; the digits are parsed exactly by DemoRunner.settings
                    seed = gr.Textbox(label="Seed", value="0", max_lines=1, elem_id="seed")
                    steps = gr.Number(label="Steps", value=d.get("num_inference_steps", 20), precision=0,
                                      elem_id="steps")
                    guidance = gr.Number(label="Guidance", value=d.get("guidance_scale"), elem_id="guidance")
                with gr.Row():
                    frames = gr.Number(label="Frames", value=d.get("num_frames"), precision=0, elem_id="frames",
                                       info=_size_info(rules, "num_frames"))
                    height = gr.Number(label="Height", value=d.get("height"), precision=0, elem_id="height",
                                       info=_size_info(rules, "height"))
                    width = gr.Number(label="Width", value=d.get("width"), precision=0, elem_id="width",
                                      info=_size_info(rules, "width"))
                speedup = gr.Slider(1.0, 5.0, value=2.0, step=0.1, label="Target speedup (transformer, cost model)",
                                    elem_id="speedup")
                schedule = gr.File(label="…or a schedule file (JSON from `vdit-accel search`; overrides the target)",
                                   file_types=[".json"], type="filepath", elem_id="schedule")
                with gr.Row():
                    use_ts = gr.Checkbox(value=True, label="Token selection (Astraea)", elem_id="token-selection")
                    use_reuse = gr.Checkbox(value=False, label="Score reuse (TimeRipple)", elem_id="score-reuse",
                                            interactive=reuse_ok,
                                            info=None if reuse_ok else "not available in this build")
                button = gr.Button("Generate dense + accelerated", variant="primary", elem_id="generate")
                error = gr.Markdown(visible=False, elem_id="error")
            with gr.Column(scale=2):
                with gr.Row():
                    dense_video = gr.Video(label="Dense", elem_id="dense-video", autoplay=True, loop=True,
                                           interactive=False)
                    accel_video = gr.Video(label="Accelerated", elem_id="accel-video", autoplay=True, loop=True,
                                           interactive=False)
                metrics = gr.Markdown(elem_id="metrics")
                dense_source = gr.Markdown(elem_id="dense-source")
                with gr.Row():
                    chart = gr.Plot(label="Per-step budget", show_label=False, elem_id="budget-chart")
                    heat_video = gr.Video(label="Recomputed tokens per step", elem_id="heatmap-video",
                                          autoplay=True, loop=True, interactive=False)
                gr.Markdown(HEATMAP_HELP)
                with gr.Accordion("Full report (JSON)", open=False):
                    report = gr.JSON(elem_id="report")
        if runner.model in ("default", None, ""):
            from ..tiny_model import EXAMPLE_PROMPTS

            gr.Examples([[p] for p in EXAMPLE_PROMPTS], inputs=[prompt], label="Example prompts")

        outputs = [error, dense_video, accel_video, metrics, dense_source, chart, heat_video, report]

        def on_click(prompt_v, negative_v, seed_v, steps_v, frames_v, height_v, width_v, guidance_v, speedup_v,
                     schedule_v, ts_v, reuse_v, progress=gr.Progress()):
            req = DemoRequest(prompt=prompt_v, negative_prompt=negative_v, seed=seed_v, num_inference_steps=steps_v,
                              num_frames=frames_v, height=height_v, width=width_v, guidance_scale=guidance_v,
                              speedup=speedup_v, schedule_file=schedule_v, token_selection=ts_v,
                              score_reuse=reuse_v)
            return run_callback(runner, req, lambda f, desc: progress(f, desc=desc))

        button.click(on_click, inputs=[prompt, negative, seed, steps, frames, height, width, guidance, speedup,
                                       schedule, use_ts, use_reuse], outputs=outputs, concurrency_limit=1)
    demo.runner = runner  # for tests and scripts
    return demo


def _size_info(rules, name: str) -> str:
    """The hint under a size input: the model's rule and limit for it."""
    lo, hi = rules.bounds(name)
    rule = f"{rules.temporal}·k + 1" if name == "num_frames" else f"multiple of {rules.spatial}"
    if hi is not None and hi == lo:
        return f"{hi} only"
    return rule if hi is None else f"{rule}, at most {hi}"


def run_callback(runner: DemoRunner, req: DemoRequest, progress: Progress | None = None) -> tuple:
    """One click: the values of the outputs ``(error, dense, accelerated, metrics, dense_source, chart, heatmap,
    report)``. Bad input and failures become a message in the page; the server keeps serving."""
    import gradio as gr

    try:
        result = runner.run(req, progress)
    except DemoInputError as e:
        return _error_outputs(gr, f"**Cannot generate:** {e}")
    except Exception as e:  # noqa: BLE001 - anything else is shown too, and logged with its traceback
        logger.exception("demo run failed")
        return _error_outputs(gr, f"**Generation failed** ({type(e).__name__}): {e}")
    report = dict(model=runner.model, dense_seconds=result.dense.seconds, dense_cached=result.dense_cached,
                  accelerated_seconds=result.accelerated.seconds, speedup=result.speedup,
                  predicted_speedup=result.predicted_speedup, schedule=result.schedule_source,
                  quality=result.metrics, acceleration=result.acceleration,
                  recomputed_tokens=heatmap_summary(result.fractions))
    return (gr.update(value="", visible=False), result.paths["dense"], result.paths["accelerated"],
            metrics_markdown(result), dense_source_markdown(result), budget_figure(result), result.paths["heatmap"],
            _jsonable(report))


def _error_outputs(gr, message: str) -> tuple:
    return (gr.update(value=message, visible=True), None, None, "", "", None, None, None)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj
