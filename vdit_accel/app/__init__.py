"""Gradio demo (``vdit-accel demo``): dense and accelerated generation side by side.

* :mod:`.runner`   :class:`DemoRunner`: input checks, the dense cache, the accelerated run, metrics, mp4 files.
* :mod:`.page`     :func:`build_app` (the Gradio page) and :func:`run_callback` (one click).
* :mod:`.heatmap`  the per-step map of recomputed tokens.

Importing this package does not import Gradio; :func:`build_app` does.

>>> from vdit_accel.app import build_app
>>> build_app("default").queue().launch()   # doctest: +SKIP
"""

from __future__ import annotations

from .page import build_app, run_callback
from .runner import DemoInputError, DemoRequest, DemoResult, DemoRunner, score_reuse_available

__all__ = ["DemoInputError", "DemoRequest", "DemoResult", "DemoRunner", "build_app", "run_callback",
           "score_reuse_available"]
