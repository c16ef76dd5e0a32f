"""The Gradio demo (`vdit-accel demo`): callbacks without a browser, then the real page in headless Chromium.

Model: ``VDIT_DEMO_MODEL`` when set; otherwise the bundled model when its weights are in vdit_accel/assets/, else
``tiny-wan``. The chosen model is printed with ``-s``. ``VDIT_DEMO_SCREENSHOT=path`` also copies the success
screenshot there; docs/demo.png is made with
``VDIT_DEMO_STEPS=20 VDIT_DEMO_SCREENSHOT=docs/demo.png pytest tests/test_demo_browser.py -k side_by_side``.

The browser tests need Debian's Chromium at /usr/bin/chromium (CI runs .ci/install_browser.sh); Playwright's own
browser download is not used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket

import pytest
import torch

from vdit_accel.app.heatmap import heatmap_frames, recompute_fractions
from vdit_accel.commands.loading import bundled_model_available

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUN_TIMEOUT_MS = 240_000  # one dense + accelerated generation on a busy 2-core CPU, with margin


def demo_model() -> str:
    return os.environ.get("VDIT_DEMO_MODEL") or ("default" if bundled_model_available() else "tiny-wan")


# few steps keep the tests quick; 6 still gives a dense warm-up, sparse steps and a dense last step
# (VDIT_DEMO_STEPS overrides it, e.g. the bundled model's 20 steps for the docs screenshot)
STEPS = int(os.environ.get("VDIT_DEMO_STEPS", "6"))


@pytest.fixture(scope="module")
def demo():
    from vdit_accel.app import build_app

    model = demo_model()
    print(f"\n[demo tests] model={model}")
    return build_app(model)


@pytest.fixture(scope="module")
def runner(demo):
    return demo.runner


def good_request(runner, **overrides):
    from vdit_accel.app import DemoRequest

    d = runner.defaults
    req = DemoRequest(prompt="a red circle moving right on a black background", seed=3,
                      num_inference_steps=STEPS, num_frames=d["num_frames"], height=d["height"],
                      width=d["width"], guidance_scale=d.get("guidance_scale"), speedup=2.0)
    return dataclasses.replace(req, **overrides)


# ------------------------------------------------------------------------------------------------ heatmap maths
def test_recompute_fractions_counts_blocks_contexts_and_dense_steps():
    # grid 1×2×2 (4 tokens), 2 blocks per call. Step 0: dense (no masks). Step 1, cond: block0 recomputed
    # tokens {0, 1}, block1 {0}; uncond: block0 {3}, block1 ran densely (no index recorded).
    masks = {(1, "cond"): {"blocks.0": torch.tensor([[0, 1]]), "blocks.1": torch.tensor([[0]])},
             (1, "uncond"): {"blocks.0": torch.tensor([[3]])}}
    calls = [(0, "cond", 2), (0, "uncond", 2), (1, "cond", 2), (1, "uncond", 2)]
    frac = recompute_fractions(masks, calls, (1, 2, 2), num_steps=3)
    assert frac.shape == (3, 1, 2, 2)
    assert torch.equal(frac[0], torch.ones(1, 2, 2))
    # 4 block executions at step 1: token0 in 2 + 1 dense = 3/4; token1 1 + 1 = 2/4; token2 0 + 1 = 1/4;
    # token3 1 + 1 = 2/4
    assert torch.allclose(frac[1].flatten(), torch.tensor([0.75, 0.5, 0.25, 0.5]))
    assert torch.equal(frac[2], torch.ones(1, 2, 2)), "a step without any call counts as dense"


def test_recompute_fractions_averages_batched_indices_over_samples():
    masks = {(0, "cond_uncond"): {"b": torch.tensor([[0, 1], [1, 2]])}}
    frac = recompute_fractions(masks, [(0, "cond_uncond", 1)], (1, 1, 3), num_steps=1)
    assert torch.allclose(frac.flatten(), torch.tensor([0.5, 1.0, 0.5]))


def test_heatmap_frames_layout_and_colours():
    frac = torch.zeros(2, 3, 2, 2)
    frac[1] = 1.0
    frames = heatmap_frames(frac, (16, 16), budgets=[0.5, 1.0], min_tile_height=32)
    # 3 tiles of 32×32 (16 px scaled ×2) with 2 px gaps, above a 20 px caption; even sizes for H.264
    assert frames.shape == (2, 3, 32 + 20, 3 * 32 + 2 * 2)
    body0, body1 = frames[0, :, :32, :32], frames[1, :, :32, :32]
    assert body0.max() < 0.05, "fraction 0 (all reused) must be drawn black"
    assert body1.mean() > 0.6, "fraction 1 (all recomputed) must be drawn bright"
    with pytest.raises(ValueError, match=r"\[steps, F', H', W'\]"):
        heatmap_frames(torch.zeros(2, 2, 2), (16, 16))


# ------------------------------------------------------------------------------------------------ callbacks
def test_callback_generates_both_videos_then_reuses_the_dense_one(runner):
    from vdit_accel.app import run_callback

    events = []
    req = good_request(runner, seed=11)
    error, dense, accel, metrics, source, chart, heat, report = run_callback(runner, req,
                                                                           lambda f, d: events.append((f, d)))
    assert error["visible"] is False
    for path in (dense, accel, heat):
        assert os.path.getsize(path) > 1000, path
    assert "PSNR" in metrics and "SSIM" in metrics and "Speedup" in metrics
    assert "generated in this run" in source
    assert chart is not None and report["dense_cached"] is False
    assert report["acceleration"]["budgets"][0] == 1.0 and min(report["acceleration"]["budgets"]) < 1.0
    steps = STEPS
    assert [d for _, d in events if d.startswith("Dense: step")] == [f"Dense: step {i}/{steps}"
                                                                    for i in range(1, steps + 1)]
    assert any(d == f"Accelerated: step {steps}/{steps}" for _, d in events)
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions), "progress must not go backwards"
    json.dumps(report)  # the report panel must be JSON-serialisable
    # the heatmap (from the recorded token indices) and the token counts agree at every step
    for heat_step, counts in zip(report["recomputed_tokens"], report["acceleration"]["steps"]):
        assert heat_step["mean"] == pytest.approx(counts["ffn_tokens"] / counts["dense_tokens"], abs=1e-6)
    assert min(s["mean"] for s in report["recomputed_tokens"]) < 1.0

    # same settings, another target: only the accelerated side runs again
    events.clear()
    out = run_callback(runner, dataclasses.replace(req, speedup=1.5), lambda f, d: events.append((f, d)))
    assert out[0]["visible"] is False
    assert "from cache" in out[4] and out[7]["dense_cached"] is True
    assert not any(d.startswith("Dense") for _, d in events)
    # a different seed is a different dense video
    out = run_callback(runner, dataclasses.replace(req, seed=12))
    assert out[7]["dense_cached"] is False


@pytest.mark.parametrize("overrides, message", [
    (dict(prompt="   "), "prompt is empty"),
    (dict(height=50), "height=50 is not a multiple of"),
    (dict(width=0), "width=0 is below this model's minimum"),
    (dict(num_frames=16), "num_frames=16: num_frames - 1 must be a multiple of"),
    (dict(num_inference_steps=None), "Steps is empty"),
    (dict(speedup=50.0), "not reachable"),
    (dict(token_selection=False, score_reuse=False), "Both methods are off"),
], ids=["empty-prompt", "height", "width", "frames", "steps", "speedup", "no-method"])
def test_callback_reports_bad_input_in_the_page(runner, overrides, message):
    from vdit_accel.app import run_callback

    error, *rest = run_callback(runner, good_request(runner, **overrides))
    assert error["visible"] is True
    assert message in error["value"], error["value"]
    assert rest[:2] == [None, None], "no stale video may stay next to an error"


def test_callback_score_reuse_alone(runner):
    from vdit_accel.app import run_callback
    from vdit_accel.app import score_reuse_available

    if not score_reuse_available():
        pytest.skip("score reuse (vdit_accel.methods.score_reuse.ReuseConfig) is not in this build")
    out = run_callback(runner, good_request(runner, seed=13, token_selection=False, score_reuse=True))
    assert out[0]["visible"] is False, out[0]["value"]
    assert "n/a predicted" in out[3]
    assert all(s["mean"] == 1.0 for s in out[7]["recomputed_tokens"]), "no token selection: every token computed"


def test_size_rules_come_from_the_pipeline():
    from vdit_accel.adapters import get_adapter
    from vdit_accel.app import DemoRunner, run_callback
    from vdit_accel.app import DemoRequest
    from vdit_accel.testing import build_tiny_cogvideox_pipeline

    pipe = build_tiny_cogvideox_pipeline()
    runner = DemoRunner(pipe, "tiny-cogvideox")  # int patch size, VAE ×8, ×4 in time
    assert runner.rules == get_adapter(pipe.transformer).size_rules(pipe)
    assert (runner.rules.spatial, runner.rules.temporal, runner.rules.patch_t) == (16, 4, 1)
    error = run_callback(runner, DemoRequest(prompt="a cat", num_inference_steps=4, num_frames=17, height=72,
                                             width=64, guidance_scale=6.0))[0]
    assert error["visible"] and "height=72 is not a multiple of 16" in error["value"]
    assert "nearest valid: 64 or 80" in error["value"]


def test_demo_limits_come_from_the_model():
    """The bundled model's RoPE table has 64 positions per axis: the page offers at most 512 px and 253 frames (not
    the 2048 px and 257 frames it once offered, which failed deep inside diffusers) and says why."""
    from vdit_accel.app import DemoRunner, run_callback
    from vdit_accel.app import DemoRequest
    from vdit_accel.commands.loading import bundled_model_available
    from vdit_accel.tiny_model import load_default_pipeline

    if not bundled_model_available():
        pytest.skip("the bundled model's weights are not in vdit_accel/assets/")
    runner = DemoRunner(load_default_pipeline(), "default")
    assert runner.rules.bounds("height") == (16, 512) and runner.rules.bounds("num_frames") == (1, 253)
    for overrides, message in [(dict(height=2048), "height=2048 is above this model's limit 512"),
                               (dict(num_frames=257), "num_frames=257 is above this model's limit 253")]:
        req = DemoRequest(prompt="a red circle", num_inference_steps=2, num_frames=17, height=64, width=64,
                          guidance_scale=5.0)
        error = run_callback(runner, dataclasses.replace(req, **overrides))[0]
        assert error["visible"] and message in error["value"] and "rope_max_seq_len=64" in error["value"]


def test_callback_reports_corrupt_and_mismatched_schedule_files(runner, tmp_path):
    from vdit_accel import BudgetSchedule
    from vdit_accel.app import run_callback

    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    error = run_callback(runner, good_request(runner, schedule_file=str(corrupt)))[0]
    assert error["visible"] and "Corrupt schedule file" in error["value"], error["value"]
    wrong_length = tmp_path / "four_steps.json"
    BudgetSchedule([1.0, 0.5, 0.5, 1.0]).save(wrong_length)
    error = run_callback(runner, good_request(runner, schedule_file=str(wrong_length)))[0]
    assert error["visible"] and "has 4 steps" in error["value"], error["value"]
    # a valid file is used instead of the target speedup
    good = tmp_path / "good.json"
    BudgetSchedule([1.0] + [0.4] * (STEPS - 2) + [1.0]).save(good)
    out = run_callback(runner, good_request(runner, schedule_file=str(good)))
    assert out[0]["visible"] is False, out[0]
    assert out[7]["acceleration"]["budgets"] == [1.0] + [0.4] * (STEPS - 2) + [1.0]
    assert "schedule file good.json" in out[3]


def test_demo_command_parses_defaults():
    from vdit_accel.cli import build_parser

    args = build_parser().parse_args(["demo"])
    assert (args.model, args.host, args.port, args.share) == ("default", "127.0.0.1", 7860, False)
    args = build_parser().parse_args(["demo", "--model", "tiny-wan", "--port", "8123", "--share"])
    assert (args.model, args.port, args.share) == ("tiny-wan", 8123, True)


# ------------------------------------------------------------------------------------------------ real browser
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                    reason=f"Debian chromium not installed at {CHROMIUM}; run .ci/install_browser.sh")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(demo):
    port = _free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        ssr_mode=False, share=False)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download "
                                                                   "needed: Debian's chromium is used)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1440, "height": 1100})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    pg.goto(server)
    pg.locator("#generate").wait_for()
    yield pg
    context.close()


def _set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")  # Gradio commits a number on blur


def _set_seed(page, seed) -> None:
    box = page.locator("#seed textarea, #seed input").first  # a text box: the digits reach Python exactly
    box.fill(str(seed))
    box.press("Tab")


def _fill_good_input(page, prompt: str, seed: int) -> None:
    page.locator("#prompt textarea").fill(prompt)
    _set_seed(page, seed)
    _set_number(page, "steps", STEPS)


# records every "Dense: step i/n" / "Accelerated: step i/n" progress text the page shows while a run is going on
_WATCH_PROGRESS = """() => { window.__progress = [];
  new MutationObserver(() => {
    const found = document.body.innerText.match(/(Dense|Accelerated): step \\d+\\/\\d+/g) || [];
    found.forEach(x => { if (!window.__progress.includes(x)) window.__progress.push(x); });
  }).observe(document.body, {subtree: true, childList: true, characterData: true}); }"""


def _progress_seen(page) -> list[str]:
    return page.evaluate("() => window.__progress")


def _wait_for_playable_video(page, elem_id: str) -> None:
    # the <video> must exist, point at the generated file and have decoded its first frame in Chromium
    page.wait_for_function(
        """(id) => { const v = document.querySelector(`#${id} video`);
                     return v !== null && !!v.currentSrc && v.readyState >= 2 && v.videoWidth > 0; }""",
        arg=elem_id, timeout=RUN_TIMEOUT_MS)


@needs_chromium
def test_browser_generates_side_by_side_and_caches_dense(page, tmp_path):
    from playwright.sync_api import expect

    _fill_good_input(page, "a blue square moving left on a gray background", seed=21)
    page.evaluate(_WATCH_PROGRESS)
    page.locator("#generate").click()
    expect(page.locator("#dense-source")).to_contain_text("generated in this run", timeout=RUN_TIMEOUT_MS)
    seen = _progress_seen(page)
    assert any(p.startswith("Dense: step") for p in seen), f"no dense progress shown: {seen}"
    assert any(p.startswith("Accelerated: step") for p in seen), f"no accelerated progress shown: {seen}"
    for elem_id in ("dense-video", "accel-video", "heatmap-video"):
        _wait_for_playable_video(page, elem_id)
    metrics = page.locator("#metrics")
    for text in ("Wall-clock", "Speedup", "PSNR", "SSIM", "Temporal flicker"):
        expect(metrics).to_contain_text(text)
    expect(metrics).to_contain_text(" dB")
    chart = page.locator("#budget-chart [data-testid=matplotlib] img")
    expect(chart).to_be_visible()
    assert (chart.get_attribute("src") or "").startswith("data:image/"), "the budget chart must be a rendered image"
    expect(page.locator("#error")).to_be_hidden()
    dense_src = page.locator("#dense-video video").get_attribute("src")
    accel_src = page.locator("#accel-video video").get_attribute("src")
    assert dense_src and accel_src and dense_src != accel_src
    # a still, comparable picture: every video paused half-way (the heatmap at a sparse middle step)
    page.evaluate("""() => document.querySelectorAll('video').forEach(v => {
                        v.pause(); v.currentTime = v.duration / 2; })""")
    page.wait_for_timeout(500)
    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    if os.environ.get("VDIT_DEMO_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["VDIT_DEMO_SCREENSHOT"])

    # re-run with another target speedup: the dense side comes from the cache, the accelerated side is new
    page.locator("#speedup input[type=number]").fill("1.5")
    page.locator("#speedup input[type=number]").press("Tab")
    page.evaluate(_WATCH_PROGRESS)
    page.locator("#generate").click()
    expect(page.locator("#dense-source")).to_contain_text("from cache", timeout=RUN_TIMEOUT_MS)
    seen = _progress_seen(page)
    assert not any(p.startswith("Dense") for p in seen), f"the cached dense side must not run again: {seen}"
    expect(page.locator("#metrics")).to_contain_text("(cached)")
    _wait_for_playable_video(page, "accel-video")
    assert page.locator("#accel-video video").get_attribute("src") != accel_src


@needs_chromium
def test_browser_shows_bad_input_and_keeps_serving(page, server, tmp_path):
    from playwright.sync_api import expect

    error = page.locator("#error")
    default_height = _default(page, "height")
    # empty prompt
    page.locator("#prompt textarea").fill("")
    page.locator("#generate").click()
    expect(error).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(error).to_contain_text("The prompt is empty")
    # a size the model cannot take
    _fill_good_input(page, "a green diamond moving up on a striped background", seed=31)
    _set_number(page, "height", 50)
    page.locator("#generate").click()
    expect(error).to_contain_text("height=50 is not a multiple of", timeout=RUN_TIMEOUT_MS)
    # a corrupt schedule file
    _set_number(page, "height", default_height)
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{ this is not json")
    page.locator("#schedule input[type=file]").set_input_files(str(corrupt))
    page.locator("#generate").click()
    expect(error).to_contain_text("Corrupt schedule file", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#dense-video video")).to_have_count(0)
    # a seed that is not a whole number
    page.goto(server)
    _fill_good_input(page, "a green diamond moving up on a striped background", seed="12abc")
    page.locator("#generate").click()
    expect(error).to_contain_text("Seed must be a whole number", timeout=RUN_TIMEOUT_MS)

    # the server keeps serving: a fresh page with good input generates, with the largest seed (no float round trip)
    page.goto(server)
    _fill_good_input(page, "a green diamond moving up on a striped background", seed=2**63 - 1)
    page.locator("#generate").click()
    expect(page.locator("#metrics")).to_contain_text("PSNR", timeout=RUN_TIMEOUT_MS)
    _wait_for_playable_video(page, "dense-video")
    _wait_for_playable_video(page, "accel-video")
    expect(page.locator("#error")).to_be_hidden()


def _default(page, elem_id: str) -> str:
    """The current value of a number input."""
    return page.locator(f"#{elem_id} input[type=number]").input_value()
