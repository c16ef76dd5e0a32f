"""Small messages (issue 16 item 10): each bad input names what is wrong and where, and nothing valid is refused."""

from __future__ import annotations

import pytest

import vdit_accel
from vdit_accel.schedule import BudgetSchedule

LATIN1 = "un café au lait\n".encode("latin-1")


@pytest.mark.parametrize("flag", ["--prompts", "--holdout-prompts"])
def test_a_non_utf8_prompts_file_names_the_flag_and_the_file(tmp_path, flag):
    from vdit_accel.commands.prompts import read_prompt_file

    path = tmp_path / "prompts.txt"
    path.write_bytes(LATIN1)
    with pytest.raises(ValueError) as e:
        read_prompt_file(str(path), flag)
    assert flag in str(e.value) and str(path) in str(e.value) and "UTF-8" in str(e.value), str(e.value)


@pytest.mark.parametrize("command", ["search", "vbench"])
def test_the_cli_reports_a_non_utf8_prompts_file(tmp_path, capsys, command):
    from vdit_accel.cli import main

    path = tmp_path / "prompts.txt"
    path.write_bytes(LATIN1)
    args = ([command, "--model", "tiny-wan", "--prompts", str(path), "--target-speedup", "2", "--steps", "4",
             "--out", str(tmp_path / "s.json")] if command == "search"
            else [command, "--model", "tiny-wan", "--prompts", str(path), "--out", str(tmp_path / "vb")])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--prompts" in err and str(path) in err and "UTF-8" in err, err


def test_a_folder_passed_as_a_schedule_is_not_called_missing(tmp_path):
    for load in (BudgetSchedule.load, BudgetSchedule.from_any):
        with pytest.raises(ValueError) as e:
            load(str(tmp_path))
        assert "is a folder, not a file" in str(e.value) and "not found" not in str(e.value), str(e.value)
    with pytest.raises(FileNotFoundError, match="not found"):  # a missing path still says so
        BudgetSchedule.load(tmp_path / "nothing.json")


def test_enable_acceleration_with_a_schedule_folder(tmp_path):
    from vdit_accel.testing import build_tiny_wan_pipeline

    pipe = build_tiny_wan_pipeline()
    with pytest.raises(ValueError, match="is a folder, not a file"):
        pipe.enable_acceleration(schedule=str(tmp_path))
    assert not vdit_accel.is_accelerated(pipe)


@pytest.fixture(scope="module")
def runner():
    from vdit_accel.app import DemoRunner
    from vdit_accel.testing import build_tiny_wan_pipeline

    return DemoRunner(build_tiny_wan_pipeline(), model="tiny-wan")


def _request(runner, **kw):
    from vdit_accel.app import DemoRequest

    d = runner.defaults
    return DemoRequest(prompt="a red circle", num_inference_steps=2, num_frames=d["num_frames"], height=d["height"],
                       width=d["width"], **kw)


@pytest.mark.parametrize("seed", [2**63 - 1, str(2**63 - 1), f" {2**63 - 1} ", 0, 7.0, "12"])
def test_the_demo_takes_every_seed_up_to_2_63_minus_1_exactly(runner, seed):
    got = runner.settings(_request(runner, seed=seed)).seed
    assert got == int(str(seed).strip().removesuffix(".0")) and isinstance(got, int)


@pytest.mark.parametrize("seed, message", [
    (2**63, "must be between 0 and 9223372036854775807, got 9223372036854775808"),
    (-1, "must be between 0"),
    (1.5, "must be a whole number"),
    ("abc", "must be a whole number"),
    (float("nan"), "must be a whole number"),
    (float("inf"), "must be a whole number"),
    (True, "must be a whole number"),
    ("", "Seed is empty"),
])
def test_the_demo_refuses_bad_seeds_by_name(runner, seed, message):
    from vdit_accel.app import DemoInputError

    with pytest.raises(DemoInputError, match="Seed") as e:
        runner.settings(_request(runner, seed=seed))
    assert message in str(e.value), str(e.value)


def test_the_demo_page_hands_the_seed_over_as_exact_digits(runner):
    """The browser holds a number input as a double (2**63 - 1 arrives as 2**63); the seed input is text instead."""
    pytest.importorskip("gradio")
    from vdit_accel.app import build_app

    demo = build_app(runner.pipe, model_name="tiny-wan", warm_up=False)
    (seed,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "seed"]
    value = seed.preprocess(str(2**63 - 1))  # what Gradio does with the browser's payload
    assert runner.settings(_request(runner, seed=value)).seed == 2**63 - 1


def test_auto_without_token_selection_is_refused_before_anything_is_installed():
    from vdit_accel import AccelerationConfig, ReuseConfig, testing

    with pytest.raises(ValueError, match="token_selection=None"):
        AccelerationConfig(schedule="auto", token_selection=None, reuse=ReuseConfig())
    pipe = testing.build_tiny_wan_pipeline()
    with pytest.raises(ValueError, match="auto"):
        pipe.enable_acceleration(schedule="auto", token_selection=None, reuse=ReuseConfig())
    assert not vdit_accel.is_accelerated(pipe)


def test_the_default_is_auto_without_a_shipped_schedule_and_the_rule_for_reuse_alone():
    from vdit_accel import ReuseConfig, testing
    from vdit_accel.runtime.handle import get_handle

    pipe = testing.build_tiny_wan_pipeline()
    pipe.enable_acceleration()
    assert get_handle(pipe.transformer).schedule.run_time is not None
    pipe.disable_acceleration()
    pipe.enable_acceleration(token_selection=None, reuse=ReuseConfig())
    assert get_handle(pipe.transformer).schedule == BudgetSchedule.default()
    pipe.disable_acceleration()
