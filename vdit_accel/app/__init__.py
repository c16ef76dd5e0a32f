"""Gradio demo (``vdit-accel demo``): dense and accelerated generation side by side.

Importing this package does not import Gradio; :func:`build_app` does.

>>> from vdit_accel.app import build_app
>>> build_app("default").queue().launch()   # doctest: +SKIP
"""

from __future__ import annotations

from .app import DemoInputError, DemoRequest, DemoResult, DemoRunner, build_app, run_callback

__all__ = ["DemoInputError", "DemoRequest", "DemoResult", "DemoRunner", "build_app", "run_callback"]
