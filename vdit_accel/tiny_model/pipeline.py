"""The bundled model's pipeline class: diffusers' ``WanPipeline`` with the model's trained settings as defaults.

``WanPipeline`` defaults to 480×832×81, which the tiny model cannot run (its RoPE table has 64 positions per axis) and
was never trained for, so ``load_default_pipeline()("a red circle")`` would fail deep inside the model. This subclass
only changes the defaults of ``__call__`` (to :data:`vdit_accel.tiny_model.DEFAULT_GENERATION_KWARGS`) and checks the
size against the model's size rules first (a ``ValueError`` naming the field, the limit and the nearest valid
values); the arithmetic is ``WanPipeline``'s. The saved ``model_index.json`` still names ``WanPipeline``, so the folder
also loads with plain diffusers (at Wan's defaults).
"""

from __future__ import annotations

import inspect

from diffusers import WanPipeline

from ..adapters import get_adapter
from . import DEFAULT_GENERATION_KWARGS


def _signature_with_defaults(fn, defaults: dict) -> inspect.Signature:
    sig = inspect.signature(fn)
    return sig.replace(parameters=[p.replace(default=defaults[p.name]) if p.name in defaults else p
                                   for p in sig.parameters.values()])


class TinyShapesWanPipeline(WanPipeline):
    """``WanPipeline`` whose ``__call__`` defaults to the bundled model's trained size and settings (64×64 px,
    17 frames, 20 steps, guidance 5.0, 16 text tokens). Every argument of ``WanPipeline.__call__`` is accepted, by
    position or by name; ``inspect.signature(pipe.__call__)`` shows the new defaults."""

    _call_signature = _signature_with_defaults(WanPipeline.__call__, DEFAULT_GENERATION_KWARGS)

    def __call__(self, *args, **kwargs):
        bound = self._call_signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        size = {name: bound.arguments[name] for name in ("height", "width", "num_frames")}
        get_adapter(self.transformer).size_rules(self).check(**size)
        arguments = dict(bound.arguments)
        arguments.pop("self")
        return super().__call__(**arguments)

    __call__.__signature__ = _call_signature
