"""vdit_accel.search: the DEAP budget search, its evaluation (prefix sharing, workers), checkpoint/resume, the CLI
and the shipped schedules. Tiny pipelines, a few seconds each; run with OMP_NUM_THREADS=1."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch

import vdit_accel
from vdit_accel import TokenSelectionConfig
from vdit_accel.schedule import BudgetSchedule
from vdit_accel.search.cost_model import CostModel, calibrate
from vdit_accel.search.engine import SearchConfig, mutate, repair, run_search
from vdit_accel.search.evaluate import Evaluator, LoadSpec, ParallelEvaluator, RunSpec
from vdit_accel.testing import build_tiny_wan_pipeline

pytest.importorskip("deap")

SMALL = dict(height=32, width=32, num_frames=9, guidance_scale=5.0, max_sequence_length=16)
TRAIN = ["a red car on the beach", "a small dog running in the city"]
HELDOUT = ["a blue horse riding at night", "a robot flying in the sky", "a cat dancing"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_wan_pipeline()


@pytest.fixture(scope="module")
def evaluator(pipe):
    return Evaluator(pipe, RunSpec(prompts=TRAIN, seeds=[0, 1], num_inference_steps=6, **SMALL))


def _pipeline_latents(pipe, spec, p, budgets):
    pipe.enable_acceleration(schedule=list(budgets), token_selection=TokenSelectionConfig(dense_fast_path=False))
    try:
        with torch.no_grad():
            return pipe(**spec.pipeline_kwargs(pipe, p)).frames.float()
    finally:
        pipe.disable_acceleration()


# ----------------------------------------------------------------------------------------------- evaluation
def test_prefix_sharing_is_bit_identical_to_the_pipeline(pipe, evaluator):
    genomes = [[1, .5, .5, .5, .5, 1], [1, .5, .5, .25, .5, 1], [1, .5, .25, .25, .5, 1], [1, .3, .3, .3, .3, .3],
               [1, 1, 0, .5, 0, 1]]  # budget 0: a skipped step
    ev = Evaluator(pipe, evaluator.spec, references=evaluator.references, cache_stride=1)
    errors = ev.evaluate(genomes)
    # steps of shared prefixes ran once: 4 candidates x 6 steps x 2 prompts = 48 without sharing
    assert ev.stats.transformer_steps == 2 * (6 + 3 + 4 + 5 + 5) < ev.stats.naive_steps == 60
    for g, e in zip(genomes, errors):
        per_prompt = []
        for p in range(2):
            ref = _pipeline_latents(pipe, ev.spec, p, g)
            assert torch.equal(ev.final_latents(g, p), ref), f"prefix-shared run differs from the pipeline for {g}"
            per_prompt.append(float((ref - ev.references[p]).pow(2).mean()))
        assert e == pytest.approx(sum(per_prompt) / 2, rel=1e-6)
    # a later batch starts from the snapshots of the first one (children share prefixes with their parents)
    before = ev.stats.transformer_steps
    again = ev.evaluate([[1, .5, .5, .5, .25, 1]])
    assert ev.stats.transformer_steps - before == 2 * 2  # resumed after step 4 of [1, .5, .5, .5, ...]
    ref = [_pipeline_latents(pipe, ev.spec, p, [1, .5, .5, .5, .25, 1]) for p in range(2)]
    assert again[0] == pytest.approx(sum(float((r - ev.references[p]).pow(2).mean()) for p, r in enumerate(ref)) / 2,
                                     rel=1e-6)
    # dense references are the plain pipeline's output, and budget 1.0 everywhere reproduces them exactly
    assert ev.evaluate([[1.0] * 6]) == [0.0]


def test_worker_processes_give_the_same_errors(evaluator):
    genomes = [[1, .5, .5, .5, .5, 1], [1, .2, .4, .6, .8, 1], [1, .3, .3, .3, .3, .3]]
    par = ParallelEvaluator(LoadSpec("tiny-wan"), evaluator.spec, evaluator.token_selection, evaluator.references,
                            workers=2)
    try:
        assert par.evaluate(genomes) == evaluator.evaluate(genomes)
    finally:
        par.close()


def test_other_pipelines_are_evaluated_with_plain_pipeline_calls():
    from vdit_accel.testing import build_tiny_cogvideox_pipeline

    cog = build_tiny_cogvideox_pipeline()
    spec = RunSpec(prompts=["a red car"], seeds=[0], num_inference_steps=4, height=16, width=16, num_frames=9,
                   guidance_scale=5.0, max_sequence_length=16)
    ev = Evaluator(cog, spec)
    assert not ev.prefix_sharing
    dense, sparse = ev.evaluate([[1.0] * 4, [1.0, 0.5, 0.5, 1.0]])
    assert dense < 1e-10 < sparse and ev.stats.transformer_steps == ev.stats.naive_steps == 8
    cog.enable_acceleration(schedule=[1.0, 0.5, 0.5, 1.0])
    try:
        with torch.no_grad():
            ref = cog(**spec.pipeline_kwargs(cog, 0)).frames.float()
    finally:
        cog.disable_acceleration()
    assert sparse == pytest.approx(float((ref - ev.references[0]).pow(2).mean()), rel=1e-6)


# ----------------------------------------------------------------------------------------------- operators
def test_repair_pins_step0_and_meets_the_target():
    cost = CostModel(budgets=[0.0, 0.5, 1.0], costs=[0.2, 0.5, 1.0])
    cfg = SearchConfig(num_steps=12, target_speedup=2.0, grid=0.05, tolerance=0.03)
    rng = random.Random(0)
    for _ in range(50):
        g = repair([rng.random() for _ in range(12)], cfg, cost, rng)
        assert g[0] == 1.0 and all(b in cfg.levels for b in g)
        assert 0.97 / 2.0 <= cost.schedule_cost(g) <= 1 / 2.0
        assert cost.speedup(g) >= 2.0
    assert cfg.mutation_prob(1) == pytest.approx(0.1) and cfg.mutation_prob(30) == pytest.approx(0.01)
    assert cfg.mutation_prob(1) > cfg.mutation_prob(10) > cfg.mutation_prob(20) > cfg.mutation_prob(30)
    g = [1.0] + [0.5] * 11
    assert mutate(list(g), cfg.levels, 0.0, rng) == g and mutate(list(g), cfg.levels, 1.0, rng)[0] == 1.0


def test_search_space_has_skipped_steps_and_returns_them(tmp_path):
    """Budget 0 (no block runs) is a level of the joint space; a high target makes the search use it."""
    cost = CostModel(budgets=[0.0, 0.999, 1.0], costs=[0.9, 1.0, 1.0], skip_cost=0.02)  # selection barely pays
    cfg = SearchConfig(num_steps=10, target_speedup=2.5, population=8, offspring=6, generations=2, seed=0)
    assert cfg.levels[0] == 0.0 and 0.05 not in cfg.levels
    assert SearchConfig(num_steps=10, target_speedup=2.0, allow_skip=False).levels[0] > 0
    evaluate = lambda genomes: [sum((1 - b) ** 2 for b in g) for g in genomes]  # noqa: E731 - prefers few changes
    result = run_search(cfg, evaluate, cost, str(tmp_path / "ck"), progress=False)
    assert 0.0 in result.best and result.best[0] == 1.0
    assert cost.speedup(result.best) >= 2.5


def test_cost_model_is_monotone_and_charges_step0_dense(pipe, evaluator):
    cm = CostModel(budgets=[0.25, 0.5, 0.75, 1.0], costs=[0.4, 0.7, 0.6, 1.0])  # noisy middle point
    assert cm.costs == sorted(cm.costs) and cm.costs[1] == pytest.approx(0.65)
    assert cm.schedule_cost([0.25, 1.0]) == cm.schedule_cost([1.0, 1.0]) == 1.0
    from vdit_accel.commands.search import transformer_inputs

    cal = calibrate(pipe.transformer, transformer_inputs(evaluator), budgets=(0.25, 1.0), rounds=1, calls_per_round=1)
    assert cal.source == "calibrated" and cal.budgets == [0.25, 1.0] and cal.costs[0] <= cal.costs[1]
    assert cal.details["plain_step_seconds"] > 0 and not vdit_accel.is_accelerated(pipe.transformer)
    with pytest.raises(ValueError, match="include 1.0"):
        CostModel(budgets=[0.1, 0.5], costs=[0.2, 0.5])


# ----------------------------------------------------------------------------------------------- the claim
def _bundled_or_skip():
    from vdit_accel.commands.loading import bundled_model_available

    if not bundled_model_available():
        pytest.skip("the bundled model's weights are not in vdit_accel/assets/ yet")
    return vdit_accel.load_default_pipeline()


@pytest.mark.parametrize("model", ["tiny-wan", "bundled"])
def test_searched_schedule_beats_uniform_of_same_cost_on_heldout_prompts(pipe, tmp_path, model):
    from vdit_accel.commands.search import transformer_inputs, uniform_at_cost

    settings = SMALL
    if model == "bundled":  # trained weights at the size they were trained for (5x8x8 = 320 video tokens)
        from vdit_accel.tiny_model import DEFAULT_GENERATION_KWARGS, EXAMPLE_PROMPTS

        pipe = _bundled_or_skip()
        settings = {k: v for k, v in DEFAULT_GENERATION_KWARGS.items() if k != "num_inference_steps"}
        train, heldout = EXAMPLE_PROMPTS[4:6], EXAMPLE_PROMPTS[:4]
    else:
        train, heldout = TRAIN, HELDOUT
    n = 8
    ev = Evaluator(pipe, RunSpec(prompts=train, seeds=[0, 1], num_inference_steps=n, **settings))
    # the pure FLOP model (deterministic; timings are not), and token budgets only: the point is where to spend them
    inputs = transformer_inputs(ev)
    x, patch = inputs["hidden_states"], pipe.transformer.config.patch_size
    n_video = (x.shape[2] // patch[0]) * (x.shape[3] // patch[1]) * (x.shape[4] // patch[2])
    cost = CostModel.from_flops(pipe.transformer, n_video, inputs["encoder_hidden_states"].shape[1],
                                selection_overhead=0.0)
    cfg = SearchConfig(num_steps=n, target_speedup=2.0, population=10, offspring=8, generations=4, grid=0.1, seed=0,
                       allow_skip=False)
    result = run_search(cfg, ev.evaluate, cost, str(tmp_path / "ck.pkl"), progress=False)
    assert result.best_speedup >= 2.0
    uniform = uniform_at_cost(cost, n, cost.schedule_cost(result.best))
    assert cost.schedule_cost(uniform) == pytest.approx(cost.schedule_cost(result.best), rel=1e-4)
    held = Evaluator(pipe, RunSpec(prompts=heldout, seeds=[100 + i for i in range(len(heldout))],
                                   num_inference_steps=n, **settings))
    searched_err, uniform_err = held.evaluate([result.best, uniform])
    assert searched_err < uniform_err, (result.best, searched_err, uniform, uniform_err)
    assert ev.stats.transformer_steps < ev.stats.naive_steps  # prefixes were shared


# ----------------------------------------------------------------------------------------------- CLI
def _cli_args(tmp_path, *extra):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# training prompts\n" + "\n".join(TRAIN) + "\n\n")
    return ["search", "--model", "tiny-wan", "--prompts", str(prompts), "--steps", "6", "--height", "32", "--width",
            "32", "--frames", "9", "--guidance-scale", "5", "--population", "6", "--offspring", "4",
            "--generations", "3", "--grid", "0.1", "--cost-model", "flops", "--seed", "3", "--no-progress",
            *extra]


def test_kill_and_resume_gives_the_uninterrupted_result(tmp_path, capsys):
    from vdit_accel.cli import main

    full = tmp_path / "full.json"
    assert main(_cli_args(tmp_path, "--target-speedup", "1.8", "--out", str(full))) == 0
    crashed = tmp_path / "crashed.json"
    args = _cli_args(tmp_path, "--target-speedup", "1.8", "--out", str(crashed))
    # the CLI does not import DEAP until the command runs; then it dies hard after generation 1 is checkpointed
    code = ("import sys, vdit_accel, vdit_accel.cli as c; c.build_parser(); import vdit_accel.search; "
            "assert 'deap' not in sys.modules, 'deap imported eagerly'; sys.exit(c.main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, *args, "--stop-after-generation", "1"],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert not crashed.exists() and (tmp_path / "crashed.ckpt").exists()
    # changed settings are refused on resume, before any work
    assert main(_cli_args(tmp_path, "--target-speedup", "1.9", "--out", str(crashed), "--resume")) == 2
    assert "target_speedup=1.8" in capsys.readouterr().err
    bad_prompts = tmp_path / "other.txt"
    bad_prompts.write_text("a cat dancing\n")
    other = [*args, "--resume"]
    other[other.index("--prompts") + 1] = str(bad_prompts)
    assert main(other) == 2 and "prompts=" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    a, b = BudgetSchedule.load(full), BudgetSchedule.load(crashed)
    assert a.budgets == b.budgets
    assert a.metadata["fitness"]["value"] == b.metadata["fitness"]["value"]
    ra = json.loads((tmp_path / "full.report.json").read_text())
    rb = json.loads((tmp_path / "crashed.report.json").read_text())
    assert rb["resumed_from"] == 1 and ra["resumed_from"] is None
    assert [g["best_error"] for g in ra["logbook"]] == [g["best_error"] for g in rb["logbook"]]
    assert ra["evaluations"] == rb["evaluations"]


def test_sigkill_mid_generation_then_resume_loses_nothing(tmp_path):
    import signal
    import time

    from vdit_accel.cli import main

    full = tmp_path / "full.json"
    # high mutation: every generation evaluates new genomes, so the run cannot finish between the first checkpoint
    # and the kill on a loaded machine
    args = _cli_args(tmp_path, "--target-speedup", "1.8", "--generations", "6", "--mutation", "0.5", "0.5")
    assert main([*args, "--out", str(full)]) == 0
    killed = tmp_path / "killed.json"
    proc = subprocess.Popen([sys.executable, "-m", "vdit_accel.cli", *args, "--out", str(killed)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed.ckpt"
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # while the next generation is being evaluated
    assert proc.wait(timeout=60) == -signal.SIGKILL and not killed.exists()
    assert main([*args, "--out", str(killed), "--resume"]) == 0
    a, b = BudgetSchedule.load(full), BudgetSchedule.load(killed)
    assert a.budgets == b.budgets and a.metadata["fitness"] == b.metadata["fitness"]


def test_schedule_file_loads_and_checks_the_run(tmp_path, pipe):
    from vdit_accel.cli import main

    out = tmp_path / "s.json"
    assert main(_cli_args(tmp_path, "--target-speedup", "1.5", "--out", str(out), "--generations", "1")) == 0
    sched = BudgetSchedule.load(out)
    md = sched.metadata
    assert len(sched.budgets) == md["steps"] == 6 and sched.budgets[0] == 1.0
    assert (md["model"], md["height"], md["width"], md["num_frames"], md["grid"]) == ("tiny-wan", 32, 32, 9, [3, 2, 2])
    assert md["target_speedup"] == 1.5 and md["predicted_speedup"] >= 1.5
    assert md["cost_model"]["source"] == "flops" and {"torch", "diffusers", "deap"} <= set(md["versions"])
    assert md["fitness"]["value"] > 0
    spec = RunSpec(prompts=TRAIN[:1], seeds=[0], num_inference_steps=6, **SMALL)
    pipe.enable_acceleration(schedule=str(out))
    try:
        with torch.no_grad():
            pipe(**spec.pipeline_kwargs(pipe, 0))
        assert vdit_accel.summary(pipe)["budgets"] == sched.budgets
        with pytest.raises(ValueError, match="has 6 steps but the pipeline runs num_inference_steps=4"):
            pipe(**{**spec.pipeline_kwargs(pipe, 0), "num_inference_steps": 4})
    finally:
        pipe.disable_acceleration()
    with pytest.raises(ValueError, match="searched for height=32"):
        sched.check_matches(model="tiny-wan", height=64)
    from vdit_accel.shipped import check_schedule_for_pipe

    check_schedule_for_pipe(sched, pipe, grid=(3, 2, 2))  # in-memory pipeline: no recorded identity to compare
    with pytest.raises(ValueError, match=r"searched for grid=\[3, 2, 2\] but this run uses grid=\[5, 8, 8\]"):
        check_schedule_for_pipe(sched, grid=(5, 8, 8))
    # the cost model of a schedule file can be reused by another search; so can a calibration alone
    assert CostModel.load(out).source == "flops"
    cm_path = tmp_path / "cm.json"
    args = _cli_args(tmp_path, "--out", str(cm_path))
    args[args.index("--cost-model") + 1] = "calibrate"
    assert main([*args, "--calibrate-only"]) == 0
    cm = CostModel.load(cm_path)
    assert cm.source == "calibrated" and cm.budgets == [0.1, 0.25, 0.5, 0.75, 1.0] and cm.details["height"] == 32


def test_nsga2_writes_the_pareto_front(tmp_path):
    from vdit_accel.cli import main

    out = tmp_path / "front.json"
    assert main(_cli_args(tmp_path, "--mode", "nsga2", "--out", str(out))) == 0
    data = json.loads((tmp_path / "pareto.json").read_text())
    front = data["front"]
    assert len(front) >= 2 and (tmp_path / "pareto.png").stat().st_size > 1000
    for f in front:  # non-dominated, cheapest first
        assert not any(o["predicted_cost"] <= f["predicted_cost"] and o["error"] < f["error"] for o in front)
    assert [f["predicted_cost"] for f in front] == sorted(f["predicted_cost"] for f in front)
    assert BudgetSchedule.load(out).metadata["search"]["mode"] == "nsga2"


@pytest.mark.parametrize("extra, match", [
    (["--target-speedup", "2", "--prompts", "/nonexistent.txt"], "no such file"),
    (["--target-speedup", "0.5"], "--target-speedup must be > 1.0"),
    ([], "--target-speedup is required in --mode ga"),
    (["--target-speedup", "2", "--resume", "--out", "/tmp/vdit_no_such_dir_x/s.json"], "does not exist"),
    (["--target-speedup", "2", "--resume"], "no checkpoint at"),
    (["--target-speedup", "2", "--cost-model", "/nonexistent.json"], "--cost-model: no such file"),
    (["--target-speedup", "9"], "out of reach"),
])
def test_cli_errors_are_clear(tmp_path, capsys, extra, match):
    from vdit_accel.cli import main

    args = _cli_args(tmp_path, "--out", str(tmp_path / "s.json"))
    if "--prompts" in extra:  # replace the default
        i = args.index("--prompts")
        args = args[:i] + args[i + 2:]
    assert main([*args, *extra]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_empty_prompt_file_is_refused(tmp_path, capsys):
    from vdit_accel.cli import main

    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    args = _cli_args(tmp_path, "--target-speedup", "2")
    args[args.index("--prompts") + 1] = str(empty)
    assert main(args) == 2 and "has no prompts" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- shipped schedules
def test_shipped_schedule_is_the_default_for_the_bundled_model(tmp_path, monkeypatch, pipe):
    import vdit_accel.shipped as shipped
    from diffusers import WanPipeline

    model_dir = tmp_path / "tiny-shapes-t2v"
    pipe.save_pretrained(model_dir)
    sched_dir = tmp_path / "schedules"
    sched_dir.mkdir()
    searched = [1.0, 0.9, 0.6, 0.4, 0.3, 0.5]
    BudgetSchedule(budgets=searched, metadata=dict(model=shipped.BUNDLED_MODEL_ID, steps=6)).save(
        sched_dir / "tiny-shapes-t2v.json")
    monkeypatch.setattr(shipped, "BUNDLED_MODEL_DIR", model_dir)
    monkeypatch.setattr(shipped, "SCHEDULES_DIR", sched_dir)
    loaded = WanPipeline.from_pretrained(str(model_dir))
    assert shipped.pipeline_identity(loaded) == shipped.BUNDLED_MODEL_ID
    assert shipped.shipped_schedule_for(pipe) is None  # built in memory: not the bundled model
    shipped.check_schedule_for_pipe(BudgetSchedule(budgets=searched, metadata=dict(model=shipped.BUNDLED_MODEL_ID)),
                                    loaded)
    with pytest.raises(ValueError, match="searched for model='tiny-wan'"):
        shipped.check_schedule_for_pipe(BudgetSchedule(budgets=searched, metadata=dict(model="tiny-wan")), loaded)
    sched = shipped.shipped_schedule_for(loaded)
    assert sched.resolve(6) == searched
    resampled = sched.resolve(11)  # another step count: resampled, step 0 dense, same shape
    assert len(resampled) == 11 and resampled[0] == 1.0 and resampled[-1] == 0.5 and resampled[2] == 0.9
    spec = RunSpec(prompts=TRAIN[:1], seeds=[0], num_inference_steps=6, **SMALL)
    loaded.set_progress_bar_config(disable=True)
    loaded.enable_acceleration()  # no schedule given: the shipped one
    try:
        with torch.no_grad():
            loaded(**spec.pipeline_kwargs(loaded, 0))
        assert vdit_accel.summary(loaded)["budgets"] == searched
    finally:
        loaded.disable_acceleration()


def test_shipped_schedule_file_is_valid():
    from vdit_accel.shipped import BUNDLED_MODEL_DIR, BUNDLED_MODEL_ID, SCHEDULES_DIR, SHIPPED_FILES
    from vdit_accel.tiny_model import DEFAULT_MODEL_DIR
    from vdit_accel.tiny_model import DEFAULT_GENERATION_KWARGS

    assert BUNDLED_MODEL_DIR.resolve() == DEFAULT_MODEL_DIR.resolve()  # the core finds the bundled model itself
    path = SCHEDULES_DIR / SHIPPED_FILES[BUNDLED_MODEL_ID]
    if not path.exists():
        pytest.skip(f"no shipped schedule at {path} yet (written by the search on the bundled model)")
    sched = BudgetSchedule.load(path)
    md = sched.metadata
    assert md["model"] == BUNDLED_MODEL_ID
    if sched.budgets is None:  # a rule: it plans for any step count with the model's cost model
        assert sched.speedup is not None and len(sched.resolve(20)) == 20 and len(sched.resolve(50)) == 50
        return
    assert md["steps"] == len(sched.budgets)
    for key in ("height", "width", "num_frames", "num_inference_steps"):
        assert md["steps" if key == "num_inference_steps" else key] == DEFAULT_GENERATION_KWARGS[key]
