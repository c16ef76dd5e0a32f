"""Search checkpoints cannot run code and every field is checked: a crafted or wrong-content file gives a clear
error naming the file and the field (never a raw KeyError / ModuleNotFoundError), before any work starts.
The bitwise kill-and-resume equality is in tests/test_search.py."""

from __future__ import annotations

import copy
import json
import os
import pickle
import random

import numpy as np
import pytest
import torch

from vdit_accel.search.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from vdit_accel.search.cost_model import CostModel
from vdit_accel.search.engine import SearchConfig


def _data() -> dict:
    genome = [1.0, 0.5, 0.5, 0.4]
    return dict(
        key=dict(search=SearchConfig(num_steps=4, target_speedup=1.5).search_key(), references_hash="abc",
                 run=dict(prompts=["a red car"], seeds=(0, 1)), cost_model=CostModel([0.0, 1.0], [0.3, 1.0]).to_dict()),
        generation=1, population=[(genome, (0.25,))], memo=[(genome, 0.25)], logbook=[dict(generation=0)],
        rng=rng_state(), elapsed_seconds=1.5, stats=dict(candidates=1, transformer_steps=4), target_generations=3)


class _RunsCode:
    """What a crafted pickle does: unpickling calls ``os.system``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_roundtrip_restores_the_generators_bit_for_bit(tmp_path):
    path = tmp_path / "s.ckpt"
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    random.random(), np.random.rand(), torch.rand(3)
    save_checkpoint(path, _data())
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    data = load_checkpoint(path)
    set_rng_state(data["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
    assert data["memo"] == [[[1.0, 0.5, 0.5, 0.4], 0.25]]
    assert json.loads(path.read_text())["format"] == "vdit-accel search checkpoint"


def test_a_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"checkpoint_version": 1, "x": _RunsCode(str(marker))}, protocol=4))
    with pytest.raises(ValueError, match=r"evil\.ckpt.*pickle.*can run code"):
        load_checkpoint(path)
    assert not marker.exists()


def test_the_cli_refuses_a_crafted_checkpoint_before_any_work(tmp_path, capsys):
    from vdit_accel.cli import main

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red car\n")
    marker = tmp_path / "pwned"
    (tmp_path / "s.ckpt").write_bytes(pickle.dumps(_RunsCode(str(marker)), protocol=2))
    args = ["search", "--model", "tiny-wan", "--prompts", str(prompts), "--steps", "4", "--target-speedup", "1.5",
            "--cost-model", "flops", "--out", str(tmp_path / "s.json"), "--resume", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "s.ckpt" in err and "pickle" in err and not marker.exists()
    # wrong content that parses: a clear message, not a KeyError traceback
    (tmp_path / "s.ckpt").write_text(json.dumps({"format": "vdit-accel search checkpoint", "checkpoint_version": 2}))
    assert main(args) == 2
    assert "bad field `key`: missing" in capsys.readouterr().err


def _set(path: str, value):
    def change(d):
        *parents, last = path.split(".")
        for p in parents:
            d = d[int(p)] if isinstance(d, list) else d[p]
        if value is KeyError:
            del d[last]
        elif isinstance(d, list):
            d[int(last)] = value
        else:
            d[last] = value
    return change


@pytest.mark.parametrize("change, field", [
    (_set("key", KeyError), "key"),
    (_set("key.search", [1, 2]), "key.search"),
    (_set("key.search.num_steps", "4"), "key.search.num_steps"),
    (_set("key.references_hash", None), "key.references_hash"),
    (_set("key.cost_model", {"budgets": [0.5]}), "key.cost_model"),
    (_set("generation", 9), "generation"),
    (_set("generation", True), "generation"),
    (_set("population", []), "population"),
    (_set("population.0", [[1.0, 0.5], [0.1]]), "population[0][0]"),
    (_set("population.0", [[1.0, 0.5, 0.5, 7.0], [0.1]]), "population[0][0][3]"),
    (_set("population.0", [[1.0, 0.5, 0.5, "x"], [0.1]]), "population[0][0][3]"),
    (_set("population.0", [[1.0, 0.5, 0.5, 0.5], [0.1, 0.2]]), "population[0][1]"),
    (_set("population.0", [[1.0, 0.5, 0.5, 0.5], [0.1]]), "population[0]"),  # not in the memo
    (_set("memo", {"a": 1}), "memo"),
    (_set("memo.0", [[1.0, 0.5, 0.5, 0.4]]), "memo[0]"),
    (_set("logbook.0", 3), "logbook[0]"),
    (_set("elapsed_seconds", float("nan")), "elapsed_seconds"),
    (_set("stats.candidates", -1), "stats.candidates"),
    (_set("rng", KeyError), "rng"),
    (_set("rng.python", [3, [1, 2], None]), "rng.python"),
    (_set("rng.numpy", ["MT19937", [1] * 10, 0, 0, 0.0]), "rng.numpy"),
    (_set("rng.numpy", ["MT19937", [-1] * 624, 0, 0, 0.0]), "rng.numpy"),
    (_set("rng.torch", "not base64!"), "rng.torch"),
    (_set("rng.torch", "AAAA"), "rng.torch"),
])
def test_every_field_is_checked(tmp_path, change, field):
    path = tmp_path / "s.ckpt"
    data = json.loads(json.dumps(_data()))
    data["format"], data["checkpoint_version"] = "vdit-accel search checkpoint", 2
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value) and f"bad field `{field}`" in str(e.value), str(e.value)


@pytest.mark.parametrize("content, match", [
    (b"\xff\xfe garbage", "not valid JSON"),
    (b"[1, 2, 3]", "not a vdit-accel search checkpoint"),
    (b'{"format": "something else"}', "not a vdit-accel search checkpoint"),
    (b'{"format": "vdit-accel search checkpoint", "checkpoint_version": 1}', "version 1"),
    (b"[" * 100000, "not valid JSON"),
])
def test_foreign_files_are_refused(tmp_path, content, match):
    path = tmp_path / "s.ckpt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        load_checkpoint(path)


def test_a_folder_is_not_called_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="a folder, not a file"):
        load_checkpoint(tmp_path)


def test_saved_tuples_compare_equal_to_current_settings(tmp_path):
    from vdit_accel.search.checkpoint import check_same_search

    path = tmp_path / "s.ckpt"
    save_checkpoint(path, copy.deepcopy(_data()))
    saved = load_checkpoint(path)
    check_same_search(saved["key"]["run"], dict(prompts=["a red car"], seeds=(0, 1)), str(path))
    with pytest.raises(ValueError, match=r"seeds=\[0, 1\] but this run has seeds=\(0, 2\)"):
        check_same_search(saved["key"]["run"], dict(seeds=(0, 2)), str(path))
