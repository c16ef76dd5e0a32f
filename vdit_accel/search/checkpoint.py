"""Search checkpoints: everything needed to continue after a crash, written atomically after every generation.

A checkpoint is one JSON file, so reading it cannot run code (earlier versions wrote pickles, which can): the search
settings, the generation index, the population with its fitnesses, the fitness memo, the logbook, the cost model,
the hash of the dense references, evaluation counters, and the states of Python's ``random``, NumPy's and torch's
generators (torch's as base64 bytes). JSON writes floats with ``repr``, which reads back bit-identical, so a
resumed search continues exactly where the killed one stopped. Every field is checked on load; a damaged or foreign
file gives an error naming the file and the field. The file is written to a temporary name and renamed over the old
one, so a kill at any moment leaves the last complete generation on disk.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import random
from typing import Any

import numpy as np
import torch

CHECKPOINT_VERSION = 2
FORMAT = "vdit-accel search checkpoint"


def rng_state() -> dict[str, Any]:
    """The global generators' states as plain JSON data."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return dict(python=[version, list(internal), gauss],
                numpy=[name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
                torch=base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"))


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the global generators from :func:`rng_state`'s data (validated by :func:`load_checkpoint`)."""
    random.setstate(_python_state(state["python"]))
    np.random.set_state(_numpy_state(state["numpy"]))
    torch.set_rng_state(_torch_state(state["torch"]))


def _python_state(s: list) -> tuple:
    return (s[0], tuple(s[1]), s[2])


def _numpy_state(s: list) -> tuple:
    return (s[0], np.asarray(s[1], dtype=np.uint32), s[2], s[3], s[4])


def _torch_state(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s, validate=True)), dtype=torch.uint8)


def save_checkpoint(path: str | os.PathLike, data: dict[str, Any]) -> None:
    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    text = json.dumps({"format": FORMAT, "checkpoint_version": CHECKPOINT_VERSION, **data})
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable checkpoint of this version, or a field is missing or malformed; the
            message names the file and the field.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "a folder, not a file" if os.path.isdir(path) else "no checkpoint"
        raise FileNotFoundError(f"--resume: {what} at {path!r}. Start the search without --resume (a checkpoint is "
                                f"written there after every generation), or pass --checkpoint PATH.")
    restart = "Delete it and start again without --resume."
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:1] == b"\x80":  # pickle protocol >= 2
        raise ValueError(f"--resume: {path!r} is a pickle, which older vdit-accel versions wrote; it is not read "
                         f"because unpickling can run code. {restart}")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"--resume: {path!r} is not a vdit-accel search checkpoint (not valid JSON: {e}). "
                         f"{restart}") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"--resume: {path!r} is not a vdit-accel search checkpoint (no \"format\": {FORMAT!r}). "
                         f"{restart}")
    if data.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise ValueError(f"--resume: {path!r} is a search checkpoint of version {data.get('checkpoint_version')!r}; "
                         f"this vdit-accel reads version {CHECKPOINT_VERSION}. {restart}")
    _validate(data, _Fields(path, restart))
    return data


class _Fields:
    """Field checks that raise ``ValueError`` naming the file and the field."""

    def __init__(self, path: str, restart: str):
        self.path, self.restart = path, restart

    def fail(self, field: str, problem: str) -> None:
        raise ValueError(f"--resume: the checkpoint {self.path!r} has a bad field `{field}`: {problem}. {self.restart}")

    def get(self, d: dict, key: str, field: str, kind: type | tuple[type, ...]) -> Any:
        if key not in d:
            self.fail(field, "missing")
        return self.check(d[key], field, kind)

    def check(self, value: Any, field: str, kind: type | tuple[type, ...]) -> Any:
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self.fail(field, f"expected {names}, got a bool")
        if not isinstance(value, kind):
            self.fail(field, f"expected {names}, got {type(value).__name__}")
        return value

    def number(self, value: Any, field: str, *, finite: bool = True) -> float:
        self.check(value, field, (int, float))
        if finite and not math.isfinite(value):
            self.fail(field, f"expected a finite number, got {value!r}")
        return value

    def genome(self, value: Any, field: str, num_steps: int) -> None:
        self.check(value, field, list)
        if len(value) != num_steps:
            self.fail(field, f"expected {num_steps} budgets (one per step), got {len(value)}")
        for i, b in enumerate(value):
            if not 0.0 <= self.number(b, f"{field}[{i}]") <= 1.0:
                self.fail(f"{field}[{i}]", f"a budget must lie in [0, 1], got {b!r}")


def _validate(data: dict[str, Any], f: _Fields) -> None:
    from .cost_model import CostModel

    key = f.get(data, "key", "key", dict)
    search = f.get(key, "search", "key.search", dict)
    f.get(key, "run", "key.run", dict)
    f.get(key, "references_hash", "key.references_hash", str)
    try:
        CostModel.from_dict(f.get(key, "cost_model", "key.cost_model", dict))
    except (ValueError, TypeError) as e:
        f.fail("key.cost_model", str(e))
    num_steps = f.get(search, "num_steps", "key.search.num_steps", int)
    mode = f.get(search, "mode", "key.search.mode", str)
    n_fit = 1 if mode == "ga" else 2

    generation = f.get(data, "generation", "generation", int)
    target = f.get(data, "target_generations", "target_generations", int)
    if not 0 <= generation <= target:
        f.fail("generation", f"expected 0 <= generation <= target_generations ({target}), got {generation}")
    population = f.get(data, "population", "population", list)
    if not population:
        f.fail("population", "empty")
    for i, item in enumerate(population):
        if not isinstance(item, list) or len(item) != 2:
            f.fail(f"population[{i}]", "expected [budgets, fitness values]")
        f.genome(item[0], f"population[{i}][0]", num_steps)
        values = f.check(item[1], f"population[{i}][1]", list)
        if len(values) != n_fit:
            f.fail(f"population[{i}][1]", f"expected {n_fit} fitness value(s) for --mode {mode}, got {len(values)}")
        for j, v in enumerate(values):
            f.number(v, f"population[{i}][1][{j}]", finite=False)  # a diverged candidate's error may be inf/nan
    memo = f.get(data, "memo", "memo", list)
    for i, item in enumerate(memo):
        if not isinstance(item, list) or len(item) != 2:
            f.fail(f"memo[{i}]", "expected [budgets, error]")
        f.genome(item[0], f"memo[{i}][0]", num_steps)
        f.number(item[1], f"memo[{i}][1]", finite=False)
    known = {tuple(g) for g, _ in memo}
    for i, (genome, _) in enumerate(population):
        if tuple(genome) not in known:
            f.fail(f"population[{i}]", "this member's error is not in `memo`")
    for i, rec in enumerate(f.get(data, "logbook", "logbook", list)):
        f.check(rec, f"logbook[{i}]", dict)
    elapsed = f.number(f.get(data, "elapsed_seconds", "elapsed_seconds", (int, float)), "elapsed_seconds")
    if elapsed < 0:
        f.fail("elapsed_seconds", f"expected >= 0, got {elapsed!r}")
    for name, count in f.get(data, "stats", "stats", dict).items():
        if f.check(count, f"stats.{name}", int) < 0:
            f.fail(f"stats.{name}", f"expected a count >= 0, got {count}")
    _validate_rng(f.get(data, "rng", "rng", dict), f)


def _validate_rng(rng: dict[str, Any], f: _Fields) -> None:
    """Types first, then the generators themselves accept the state (applied to throwaway generators)."""
    py = f.get(rng, "python", "rng.python", list)
    if len(py) != 3 or not isinstance(py[0], int) or not isinstance(py[1], list) or len(py[1]) != 625 or \
            not all(isinstance(x, int) and not isinstance(x, bool) for x in py[1]) or \
            not (py[2] is None or isinstance(py[2], float)):
        f.fail("rng.python", "expected [version, [625 integers], gauss or null] (random.getstate())")
    try:
        random.Random().setstate(_python_state(py))
    except (ValueError, TypeError, OverflowError, IndexError) as e:
        f.fail("rng.python", f"not a state of Python's generator ({e})")
    nps = f.get(rng, "numpy", "rng.numpy", list)
    if len(nps) != 5 or nps[0] != "MT19937" or not isinstance(nps[1], list) or len(nps[1]) != 624 or \
            not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2 ** 32 for x in nps[1]) or \
            not all(isinstance(x, int) for x in nps[2:4]) or not isinstance(nps[4], (int, float)):
        f.fail("rng.numpy", "expected ['MT19937', [624 uint32 keys], pos, has_gauss, cached_gaussian] "
                            "(numpy.random.get_state())")
    try:
        np.random.RandomState().set_state(_numpy_state(nps))
    except (ValueError, TypeError, OverflowError, IndexError) as e:
        f.fail("rng.numpy", f"not a state of NumPy's generator ({e})")
    ts = f.get(rng, "torch", "rng.torch", str)
    try:
        torch.Generator().set_state(_torch_state(ts))
    except (ValueError, TypeError, RuntimeError, binascii.Error) as e:
        f.fail("rng.torch", f"not a base64 state of torch's CPU generator ({e})")


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so saved and current settings compare equal."""
    return json.loads(json.dumps(value))


def check_same_search(saved: dict[str, Any], current: dict[str, Any], path: str) -> None:
    """Raise if a setting that defines the search differs between the checkpoint and this command line."""
    for key, value in current.items():
        if key in saved and saved[key] != _plain(value):
            raise ValueError(f"--resume: the checkpoint {path!r} was written with {key}={saved[key]!r} but this run "
                             f"has {key}={value!r}. Resume with the same settings, or start a new search without "
                             f"--resume.")
