"""``benchmarks/gpu_suite.py --dry-run``: the GPU suite's code at tiny shapes on CPU, so the first run on a lent GPU
does not die on a typo (every section, eager and compiled, writes its table)."""

from __future__ import annotations

import importlib.util
import json
import os


def test_gpu_suite_dry_run(tmp_path):
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "gpu_suite.py")
    spec = importlib.util.spec_from_file_location("gpu_suite", path)
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    assert suite.main(["--dry-run", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "gpu_cpu_dry_run.json").read_text())
    assert [r["theta"] for r in res["kernel"]["rows"]] == [0.7, 0.5, 0.4]
    for key in ("e2e_eager", "e2e_compiled"):
        assert res[key]["complete"], res[key]
        assert [r["setting"][:9] for r in res[key]["rows"]] == ["θ=0.7", "θ=0.5", "θ=0.4", "speedup=2", "speedup=3"]
    assert res["e2e_compiled"]["compiled_graphs"] == 2  # plain dense, and one sparse graph for every budget
    assert set(res["caches"]["rows"]) == {"dense", "FirstBlockCache (threshold=0.1)",
                                          "TaylorSeer (interval=2, order=1)", "vdit-accel (speedup=2.0)"}
    md = (tmp_path / "gpu_cpu_dry_run.md").read_text()
    assert res["kernel"]["dtype"] == "torch.bfloat16"  # the GPU run's dtype, mixed with fp32 norms as loaded
    assert "(a) Query-sparse" in md and "compiled (eager)" in md and "(c) Caches" in md
