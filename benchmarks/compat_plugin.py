"""pytest plugin for ``benchmarks/compat_suite.py``: forces vdit-accel acceleration on every diffusers pipeline the
tests run, in the mode named by ``VDIT_COMPAT_MODE``.

    VDIT_COMPAT_MODE=budget1 python -m pytest -p compat_plugin <diffusers tests>   # benchmarks/ on PYTHONPATH

Modes: ``off`` (acceleration never enabled: the baseline), ``budget1`` (budget 1.0 at every step: the accelerated
code path, dense), ``default`` (``pipe.enable_acceleration()``), ``speedup2`` (``enable_acceleration(speedup=2)``),
``half`` (budget 0.5 at every step: diffusers' tests run 2 steps, on which the default schedule is dense and
``speedup=2`` is refused as unreachable, so this mode is the one that exercises token selection).

Every pipeline opens its denoising loop with ``self.progress_bar(...)``, after the prompts are encoded and the
scheduler's timesteps are set and before the first transformer call; the plugin enables acceleration there (once
per pipeline object; it stays on for later calls). Errors from ``enable_acceleration`` propagate, so a refusal (a
diffusers cache already enabled, an unsupported transformer) fails the test with vdit-accel's own message. Each
enabling is logged to ``VDIT_COMPAT_LOG`` (JSON lines: test id, pipeline, outcome) for the table.

Offline stand-in for an optional dependency: without ``ftfy`` (prompt cleaning), Wan-family pipelines fail with
``NameError: name 'ftfy' is not defined``; the plugin then gives them an identity ``ftfy.fix_text`` (in every mode,
the baseline included).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types

import pytest

MODES = {
    "off": None,
    "budget1": lambda pipe: pipe.enable_acceleration(schedule=_dense()),
    "default": lambda pipe: pipe.enable_acceleration(),
    "speedup2": lambda pipe: pipe.enable_acceleration(speedup=2.0),
    "half": lambda pipe: pipe.enable_acceleration(schedule=_half()),
}
_current_test = {"id": None}


def _dense():
    from vdit_accel.schedule import BudgetSchedule

    return BudgetSchedule.dense()


def _half():
    from vdit_accel.schedule import BudgetSchedule

    return BudgetSchedule.uniform(0.5)  # every step after the first call of each CFG branch (empty cache) at 0.5


def _log(record: dict) -> None:
    path = os.environ.get("VDIT_COMPAT_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _ftfy_standin() -> types.ModuleType | None:
    if importlib.util.find_spec("ftfy") is not None:
        return None
    module = types.ModuleType("ftfy")
    module.fix_text = lambda text: text  # prompt cleaning only: identity on the tests' ASCII prompts
    return module


_FTFY = _ftfy_standin()


def _give_ftfy() -> None:
    """Diffusers pipeline modules import ``ftfy`` only when it is installed; hand the loaded ones the stand-in."""
    if _FTFY is None:
        return
    for name, module in list(sys.modules.items()):
        if name.startswith("diffusers.pipelines") and hasattr(module, "basic_clean") and not hasattr(module, "ftfy"):
            module.ftfy = _FTFY


def pytest_collection_finish(session):
    _give_ftfy()


def pytest_configure(config):
    mode = os.environ.get("VDIT_COMPAT_MODE", "budget1")
    if mode not in MODES:
        raise pytest.UsageError(f"VDIT_COMPAT_MODE must be one of {sorted(MODES)}, got {mode!r}")
    enable = MODES[mode]
    if enable is None:
        return
    import vdit_accel  # registers pipe.enable_acceleration on DiffusionPipeline
    from diffusers import DiffusionPipeline

    original = DiffusionPipeline.progress_bar

    def progress_bar(self, *args, **kwargs):
        if getattr(self, "transformer", None) is not None or getattr(self, "transformer_2", None) is not None:
            if not vdit_accel.is_accelerated(self):
                try:
                    enable(self)
                except Exception as err:
                    _log({"test": _current_test["id"], "pipeline": type(self).__name__, "error": repr(err)[:300]})
                    raise
                _log({"test": _current_test["id"], "pipeline": type(self).__name__, "accelerated": True})
        return original(self, *args, **kwargs)

    DiffusionPipeline.progress_bar = progress_bar


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _current_test["id"] = item.nodeid
    _give_ftfy()  # pipelines a test imports lazily
