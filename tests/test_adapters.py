"""The adapters are the only home of per-family knowledge: the FLOP model, the context-parallel plan and processors,
the query-sparse processors (one template, per-family hooks) and the size rules all hang off ``get_adapter``."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from vdit_accel import testing
from vdit_accel.adapters import ModelAdapter, QuerySparseAttnProcessor, get_adapter
from vdit_accel.cost import block_flops

PACKAGE = Path(__file__).resolve().parent.parent / "vdit_accel"
BUILDERS = {"wan": testing.build_tiny_wan_pipeline, "cogvideox": testing.build_tiny_cogvideox_pipeline,
            "hunyuan_video": testing.build_tiny_hunyuan_video_pipeline, "ltx": testing.build_tiny_ltx_pipeline,
            "mochi": testing.build_tiny_mochi_pipeline}
FAMILY_WORDS = ("Wan", "CogVideoX", "Hunyuan", "LTX", "Mochi")


@pytest.fixture(scope="module")
def transformers():
    return {name: build().transformer for name, build in BUILDERS.items()}


# FLOPs of one block at 320 video and 16 text tokens, from the per-class branches cost.py had before the FLOP models
# moved into the adapters: the numbers must not change.
FLOPS_BEFORE = {"wan": (774144, 12779520), "cogvideox": (2392064, 20316160), "hunyuan_video": (537600, 11673600),
                "ltx": (1376256, 21626880), "mochi": (344064, 8847360)}


@pytest.mark.parametrize("family", list(BUILDERS))
def test_block_flops_is_the_adapters_flop_model(transformers, family):
    transformer = transformers[family]
    flops = block_flops(transformer, 320, 16)
    assert (flops.dense, flops.scalable) == FLOPS_BEFORE[family]
    assert get_adapter(transformer).flops(transformer.config, 320, 16) == flops


@pytest.mark.parametrize("family", list(BUILDERS))
def test_processors_are_the_template_with_the_families_signature(transformers, family):
    """diffusers passes a processor only the keyword arguments its ``__call__`` names, so each family's query-sparse
    processor must name exactly what the family's own processor names."""
    transformer = transformers[family]
    adapter = get_adapter(transformer)
    _, module = adapter.self_attention_modules(transformer)[0]
    assert issubclass(adapter.make_processor, QuerySparseAttnProcessor)
    ours = list(inspect.signature(adapter.make_processor.__call__).parameters)
    theirs = list(inspect.signature(type(module.processor).__call__).parameters)
    assert ours == theirs


def _code_strings_and_names(path: Path) -> list[str]:
    """String constants (docstrings excluded) and identifiers of a module."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            out.append(node.value)
        elif isinstance(node, ast.Name):
            out.append(node.id)
        elif isinstance(node, ast.Attribute):
            out.append(node.attr)
    return out


@pytest.mark.parametrize("module", sorted(str(p.relative_to(PACKAGE)) for p in [
    PACKAGE / "cost.py", *(PACKAGE / "app").glob("*.py"), *(PACKAGE / "parallel").glob("*.py")]))
def test_no_family_is_named_outside_the_adapters(module):
    """Parallelism, the cost model and the demo ask ``get_adapter``; none of them names a family in code."""
    if not (PACKAGE / module).exists():
        pytest.skip(f"{module} is not in this tree")
    named = [s for s in _code_strings_and_names(PACKAGE / module) if any(w in s for w in FAMILY_WORDS)]
    assert not named, f"{module} names families: {named}"


def test_adapter_rejects_an_unknown_text_policy():
    wan = get_adapter(testing.build_tiny_wan_pipeline().transformer)
    with pytest.raises(ValueError, match="cp_text must be 'split', 'whole' or None"):
        ModelAdapter(name="x", transformer_cls=object, block_lists=(), self_attention="attn", token_wise={},
                     make_processor=wan.make_processor, grid_fn=wan.grid_fn, cp_text="both")
