"""benchmarks/memory_full_depth.py and benchmarks/cache_mode_speed.py: their --quick runs, end to end.

No timing or memory thresholds (those are the benchmarks' business on a shared machine); what is checked is the
structure of the results and the cache accounting, which is exact arithmetic on the tensors each mode keeps.
"""

import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script: str, *args: str) -> None:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), "--quick", *args], check=True,
                   env=env, cwd=ROOT, stdout=subprocess.DEVNULL, timeout=600)


def test_memory_quick(tmp_path):
    out = tmp_path / "memory"
    _run("memory_full_depth.py", "--modes", "dense", "forecast", "forecast-bf16", "--out", str(out))
    res = json.loads(out.with_suffix(".json").read_text())
    assert "| forecast-bf16 |" in out.with_suffix(".md").read_text()
    modes = res["modes"]
    assert list(modes) == ["dense", "forecast", "forecast-bf16"]
    cfg = res["config"]
    n = cfg["frames"] * (cfg["height"] // 2) * (cfg["width"] // 2)  # video tokens
    c = 2 * 16  # the tiny shape's width (heads × head_dim)
    for mode, r in modes.items():
        assert r["peak_rss"] >= r["baseline_rss"] > r["weight_bytes"] > 0, mode
        assert r["working_set"] == r["peak_rss"] - r["baseline_rss"]
        assert math.isclose(modes[mode]["peak_ratio_to_dense"], r["peak_rss"] / modes["dense"]["peak_rss"])
    # dense: one step, the last step runs the cond branch only; accelerated: both branches, then cond
    assert [(x["step"], x["branch"]) for x in modes["dense"]["calls"]] == [(0, "cond")]
    assert [(x["step"], x["branch"]) for x in modes["forecast"]["calls"]] == [(0, "cond"), (0, "uncond"),
                                                                             (1, "cond")]
    assert modes["dense"]["cache_bytes"]["total"] == 0
    # per block and branch: block input, forecast value and first difference [N, C] in the cache dtype, plus the
    # fp32 LSE, int32 skip counter and fp64 timesteps of the two last computations [N] each
    layers, branches = cfg["layers"], 2
    for mode, size in (("forecast", 4), ("forecast-bf16", 2)):
        per_block = 3 * n * c * size + n * 4 + n * 4 + n * 2 * 8
        assert modes[mode]["cache_bytes"]["blocks"] == layers * branches * per_block, mode
        # no step of [1.0, 0.5] is skipped: the skipped-step forecast keeps no output
        assert modes[mode]["cache_bytes"]["step_forecast"] == 0


def test_cache_mode_speed_quick(tmp_path):
    out = tmp_path / "speed"
    _run("cache_mode_speed.py", "--modes", "output", "forecast", "--out", str(out))
    res = json.loads(out.with_suffix(".json").read_text())
    assert "dense_fast_path=True" in out.with_suffix(".md").read_text()
    rows = res["speed"]["rows"]
    assert [(r["method"], r["budget"]) for r in rows] == [
        ("fast_path_on", 1.0), ("fast_path_off", 1.0),
        *[(m, b) for m in ("output", "forecast") for b in res["config"]["sequence"]]]
    for r in rows:
        assert r["wall_s"] > 0 and r["cpu_s"] >= 0 and math.isfinite(r["wall_vs_dense"])
        if r["method"] in ("output", "forecast") and r["budget"] > 0:
            assert r["flop_ideal"] >= 1.0 and r["cost_model_prediction"] >= 1.0
            assert math.isclose(r["fraction_of_prediction_wall"], r["speedup_wall"] / r["cost_model_prediction"])
    assert res["speed"]["repeats_done"] == res["config"]["repeats"] == 1
