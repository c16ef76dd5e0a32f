"""Search checkpoints: everything needed to continue after a crash, written atomically after every generation.

A checkpoint is a pickle of plain data (lists, dicts, floats, RNG state tuples; no DEAP classes, no tensors):
the search settings, the generation index, the population with its fitnesses, the fitness memo, the logbook,
the cost model, the hash of the dense references, evaluation counters, and the states of Python's ``random``,
NumPy's and torch's generators. It is written to a temporary file and renamed over the old one, so a kill at any
moment leaves the last complete generation on disk.
"""

from __future__ import annotations

import os
import pickle
import random
from typing import Any

import numpy as np
import torch

CHECKPOINT_VERSION = 1


def rng_state() -> dict[str, Any]:
    return dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state().numpy().tobytes())


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(torch.frombuffer(bytearray(state["torch"]), dtype=torch.uint8))


def save_checkpoint(path: str | os.PathLike, data: dict[str, Any]) -> None:
    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        pickle.dump({**data, "checkpoint_version": CHECKPOINT_VERSION}, f, protocol=4)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume: no checkpoint at {path!r}. Start the search without --resume (a "
                                f"checkpoint is written there after every generation), or pass --checkpoint PATH.")
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
        raise ValueError(f"Corrupt search checkpoint {path!r}: {e}. Delete it and start again without --resume.") from e
    if not isinstance(data, dict) or data.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path!r} is not a vdit-accel search checkpoint of version {CHECKPOINT_VERSION}; delete it "
                         f"and start again without --resume.")
    return data


def check_same_search(saved: dict[str, Any], current: dict[str, Any], path: str) -> None:
    """Raise if a setting that defines the search differs between the checkpoint and this command line."""
    for key, value in current.items():
        if key in saved and saved[key] != value:
            raise ValueError(f"--resume: the checkpoint {path!r} was written with {key}={saved[key]!r} but this run "
                             f"has {key}={value!r}. Resume with the same settings, or start a new search without "
                             f"--resume.")
