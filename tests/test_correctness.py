"""Correctness under real use (issue 16): size changes, shared transformers, NaN/inf, user processors, foreign
schedule files, statistics of repeated calls, compile wrappers, and a suite that pins its own threads.

Tiny pipelines of the real diffusers classes (``vdit_accel.testing``) and the bundled model where a check needs a
model with a recorded identity. Each test failed before its fix.
"""

import ast
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

import vdit_accel
from vdit_accel import AccelerationConfig, BudgetSchedule, TokenSelectionConfig, testing
from vdit_accel.runtime.processors import ProcessorReplacedError
from vdit_accel.shipped import BUNDLED_MODEL_ID

from .conftest import hook_names, processors, run_pipe

PACKAGE = Path(vdit_accel.__file__).resolve().parent


def _wan():
    return testing.build_tiny_wan_pipeline()


# ------------------------------------------------------------------------------ 1. budgets follow the token count
@pytest.fixture
def flop_only_cost(monkeypatch):
    """The pure FLOP cost model (no per-block overhead): token selection pays, so planned budgets depend on the
    token and text counts through the dense FLOP fraction."""
    import vdit_accel.cost

    monkeypatch.setattr(vdit_accel.cost, "SELECTION_OVERHEAD_WIDTH", 0.0)


def test_speedup_budgets_are_resolved_again_when_the_size_changes(flop_only_cost):
    pipe = _wan()
    pipe.enable_acceleration(speedup=1.3)
    run_pipe(pipe, steps=6, height=48, width=64)
    large = vdit_accel.summary(pipe)["budgets"]
    second = run_pipe(pipe, steps=6, height=32, width=32)
    small = vdit_accel.summary(pipe)["budgets"]
    assert small != large  # the FLOP model gives another dense fraction at 20 tokens than at 60
    fresh = _wan()
    fresh.enable_acceleration(speedup=1.3)
    assert torch.equal(second, run_pipe(fresh, steps=6, height=32, width=32))
    assert small == vdit_accel.summary(fresh)["budgets"]


def test_budgets_follow_the_text_length(flop_only_cost):
    pipe = _wan()
    pipe.enable_acceleration(speedup=1.3)
    run_pipe(pipe, steps=6, max_sequence_length=16)
    short = vdit_accel.summary(pipe)["budgets"]
    run_pipe(pipe, steps=6, max_sequence_length=64)
    assert vdit_accel.summary(pipe)["budgets"] != short  # more text tokens: a larger dense share per block


# -------------------------------------------------------------- 2. the running pipeline's scheduler maps the steps
def test_second_pipeline_sharing_the_transformer_uses_its_own_scheduler():
    schedule = [1.0, 0.5, 0.5, 0.5, 0.5, 1.0]
    pipe = _wan()
    pipe.enable_acceleration(schedule=schedule)
    run_pipe(pipe, steps=6)  # the first pipeline's scheduler now holds 6 timesteps of its own
    other = WanPipeline(**{**pipe.components, "scheduler": FlowMatchEulerDiscreteScheduler(shift=1.0)})
    out = run_pipe(other, steps=6)
    info = vdit_accel.summary(other)
    assert [s["step"] for s in info["steps"]] == list(range(6))
    assert [s["calls"] for s in info["steps"]] == [2] * 6  # cond + uncond at every step
    reference = _wan()
    reference.scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    reference.enable_acceleration(schedule=schedule)
    assert torch.equal(out, run_pipe(reference, steps=6))


# -------------------------------------------------------------------------------------------- 3. NaN and infinity
@pytest.mark.parametrize("make, field", [
    (lambda: AccelerationConfig(speedup=math.nan), "speedup"),
    (lambda: AccelerationConfig(speedup=math.inf), "speedup"),
    (lambda: TokenSelectionConfig(w_alpha=math.nan), "TokenSelectionConfig.w_alpha"),
    (lambda: TokenSelectionConfig(w_alpha=math.inf), "TokenSelectionConfig.w_alpha"),
    (lambda: TokenSelectionConfig(w_beta=math.inf), "TokenSelectionConfig.w_beta"),
    (lambda: TokenSelectionConfig(w_beta=-math.inf), "TokenSelectionConfig.w_beta"),
], ids=["speedup-nan", "speedup-inf", "w_alpha-nan", "w_alpha-inf", "w_beta-inf", "w_beta-minus-inf"])
def test_nan_and_inf_are_rejected_naming_the_field(make, field):
    with pytest.raises(ValueError, match=rf"`{field}` must be a finite number"):
        make()


def test_enable_with_nan_speedup_leaves_the_pipeline_unchanged():
    pipe = _wan()
    with pytest.raises(ValueError, match="`speedup` must be a finite number"):
        pipe.enable_acceleration(speedup=float("nan"))
    assert not vdit_accel.is_accelerated(pipe) and not hook_names(pipe.transformer)


# ----------------------------------------------------------------------------- 4. processors set after enabling
def _replace_with_default_processor(pipe):
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    pipe.transformer.set_attn_processor(WanAttnProcessor())


def _fuse_qkv(pipe):
    pipe.transformer.fuse_qkv_projections()


@pytest.mark.parametrize("family, replace", [
    ("wan", _replace_with_default_processor),
    ("cogvideox-rope", _fuse_qkv),
], ids=["wan-set_attn_processor", "cogvideox-fuse_qkv_projections"])
def test_processor_set_after_enable_raises_and_disable_keeps_it(family, replace):
    from .conftest import FAMILIES

    pipe = FAMILIES[family]()
    pipe.enable_acceleration(schedule=[1.0, 0.5, 0.5, 1.0])
    run_pipe(pipe, steps=4)
    replace(pipe)
    users = processors(pipe.transformer)
    with pytest.raises(ProcessorReplacedError, match=r"was replaced by .* after `enable_acceleration\(\)`"):
        run_pipe(pipe, steps=4)
    pipe.disable_acceleration()
    assert processors(pipe.transformer) == users  # the user's processors, on every module, not the saved ones
    assert not any(n.startswith("vdit_accel") for n in hook_names(pipe.transformer))
    accelerated_then_removed = run_pipe(pipe, steps=4)
    plain = FAMILIES[family]()
    replace(plain)
    assert torch.equal(accelerated_then_removed, run_pipe(plain, steps=4))


def test_processor_set_after_enable_with_reuse_only_raises():
    pipe = _wan()
    pipe.enable_acceleration(reuse=vdit_accel.ReuseConfig(), token_selection=None)
    _replace_with_default_processor(pipe)
    with pytest.raises(ProcessorReplacedError, match="score-reuse"):
        run_pipe(pipe, steps=4)
    pipe.disable_acceleration()
    assert not vdit_accel.is_accelerated(pipe)


# ------------------------------------------------------------- 5. schedule files checked against what they were for
def test_searched_schedule_file_on_another_size_raises_at_the_first_call(tmp_path):
    """A schedule searched for the bundled model (its grid recorded, as `vdit-accel search` writes it) loads on any
    Wan pipeline; the first call checks it against the run and names the override."""
    path = tmp_path / "searched.json"
    budgets = [1.0, 1.0, 0.5, 0.0, 1.0, 1.0]
    BudgetSchedule(budgets=budgets, metadata=dict(model=BUNDLED_MODEL_ID, grid=[5, 8, 8], steps=6)).save(path)
    pipe = _wan()
    pipe.enable_acceleration(schedule=str(path))
    with pytest.raises(ValueError, match=r"searched for grid=\[5, 8, 8\] but this run uses grid=\[5, 4, 4\].*"
                                         r"check_schedule=False"):
        run_pipe(pipe, steps=6)
    pipe.disable_acceleration()
    pipe.enable_acceleration(schedule=str(path), check_schedule=False)  # the documented override
    run_pipe(pipe, steps=6)
    assert vdit_accel.summary(pipe)["budgets"] == budgets


def test_schedule_for_another_model_is_refused_at_enable_time(tmp_path):
    pipe = vdit_accel.load_default_pipeline()
    path = tmp_path / "other.json"
    BudgetSchedule(budgets=[1.0, 0.5, 1.0], metadata=dict(model="someone/other-model")).save(path)
    with pytest.raises(ValueError, match=r"searched for model='someone/other-model' but this run uses "
                                         rf"model='{BUNDLED_MODEL_ID}'.*check_schedule=False"):
        pipe.enable_acceleration(schedule=str(path))
    assert not vdit_accel.is_accelerated(pipe) and not hook_names(pipe.transformer)
    pipe.enable_acceleration(AccelerationConfig(schedule=str(path), check_schedule=False))
    assert vdit_accel.is_accelerated(pipe)


def test_schedule_made_for_another_step_count_says_so():
    pipe = _wan()
    pipe.enable_acceleration(schedule=BudgetSchedule(budget=0.5, metadata=dict(steps=8)))
    with pytest.raises(ValueError, match="searched for steps=8 but this run uses steps=4"):
        run_pipe(pipe, steps=4)


# ---------------------------------------------------------------------- 8. statistics describe the last call only
def test_statistics_of_one_step_runs_do_not_accumulate():
    pipe = _wan()
    pipe.enable_acceleration(schedule=[1.0])
    for _ in range(5):
        run_pipe(pipe, steps=1)
    info = vdit_accel.summary(pipe)
    assert [(s["step"], s["calls"]) for s in info["steps"]] == [(0, 2)]
    assert len(vdit_accel.get_runtime(pipe).records) == 2


def test_statistics_reset_when_driving_the_steps_by_hand():
    from vdit_accel.api import accelerate_transformer, set_step

    pipe = _wan()
    tr = pipe.transformer
    cfg = AccelerationConfig(schedule=[1.0])
    accelerate_transformer(tr, cfg, cfg.schedule)
    x = torch.randn(1, 16, 2, 4, 4)
    text = torch.randn(1, 16, 32)
    with torch.no_grad():
        for _ in range(3):
            set_step(tr, 0, 1)
            tr(x, timestep=torch.tensor([500]), encoder_hidden_states=text)
    assert len(vdit_accel.get_runtime(tr).records) == 1


# ------------------------------------------------------------------------------------- 10. torch.compile wrapper
def test_compiled_transformer_says_enable_first_then_compile_in_place():
    pipe = _wan()
    original = pipe.transformer
    pipe.transformer = torch.compile(original)  # wrapping compiles nothing yet
    with pytest.raises(TypeError, match=r"Enable acceleration on the uncompiled pipeline first.*"
                                        r"`pipe\.transformer\.compile\(\)`"):
        pipe.enable_acceleration()
    assert not hook_names(original)


# -------------------------------------------------------------------------------- 11. plain pytest pins threads
@pytest.mark.skipif(os.environ.get("VDIT_ACCEL_THREAD_PROBE") != "1", reason="run by test_plain_pytest_pins_threads")
def test_thread_probe():
    child = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                           capture_output=True, text=True, check=True)
    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    assert child.stdout.strip() == "1"  # worker processes inherit the same setting


def test_plain_pytest_pins_threads():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["VDIT_ACCEL_THREAD_PROBE"] = "1"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"{__file__}::test_thread_probe"], env=env, cwd=PACKAGE.parent,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------------- issue 14: the method registry
def test_methods_are_registered_in_order_and_never_import_config_or_api():
    from vdit_accel.methods import registered_methods

    assert [m.name for m in registered_methods()][:2] == ["token_selection", "reuse"]
    for path in (PACKAGE / "methods").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
                assert not any(n.split(".")[-1] in ("config", "api") and (node.level >= 2 or "vdit_accel" in n)
                               for n in names), f"{path} imports {names}"


def test_a_method_that_fails_to_install_leaves_nothing_behind():
    from vdit_accel.methods import register_method, registered_methods

    apply_reuse = next(m.apply for m in registered_methods() if m.name == "reuse")

    def broken(transformer, adapter, runtime, config):
        raise RuntimeError("broken method")

    pipe = _wan()
    before = processors(pipe.transformer)
    register_method("reuse", broken)
    try:
        with pytest.raises(RuntimeError, match="broken method"):
            pipe.enable_acceleration(reuse=vdit_accel.ReuseConfig())
    finally:
        register_method("reuse", apply_reuse)
    assert not vdit_accel.is_accelerated(pipe)
    assert processors(pipe.transformer) == before and not hook_names(pipe.transformer)
