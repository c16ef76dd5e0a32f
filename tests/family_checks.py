"""Checks shared by the family tests: capture each accelerated block's call, rerun it dense and compare the selected
rows; the query-sparse processor is the template with the family's own signature."""

from __future__ import annotations

import inspect

import torch


def capture_blocks(transformers_and_runtimes):
    """Forward hooks on every accelerated block: ``(block, name, runtime, step, context, args, kwargs, output)``."""
    from vdit_accel.adapters import get_adapter

    captured, handles = [], []
    for transformer, rt in transformers_and_runtimes:
        rt.record_masks = True
        for name, block in get_adapter(transformer).blocks(transformer):
            def hook(module, args, kwargs, output, name=name, rt=rt):
                captured.append((module, name, rt, rt.step, rt.context, args, kwargs, output))
            handles.append(block.register_forward_hook(hook, with_kwargs=True))
    return captured, handles


def check_selected_rows_against_dense_blocks(captured, masks) -> int:
    """Rerun each captured block dense (acceleration already removed) and compare the selected video rows and the
    whole text stream."""
    checked = 0
    for module, name, rt, step, context, args, kwargs, output in captured:
        index = masks[id(rt)].get((step, context), {}).get(name)
        if index is None:
            continue
        with torch.no_grad():
            dense = module(*args, **kwargs)
        video, dense_video = (output[0], dense[0]) if isinstance(output, tuple) else (output, dense)
        rows = index.unsqueeze(-1).expand(-1, -1, video.shape[-1])
        torch.testing.assert_close(video.gather(1, rows), dense_video.gather(1, rows), rtol=1e-4, atol=1e-5)
        if isinstance(output, tuple) and output[1] is not None:  # joint attention: the text stream is exact
            torch.testing.assert_close(output[1], dense[1], rtol=1e-4, atol=1e-5)
        checked += 1
    return checked


def assert_template_processor(transformer):
    """The family's query-sparse processor is the template and names exactly the arguments of the family's own
    processor (diffusers passes a processor only the keyword arguments its ``__call__`` names)."""
    from vdit_accel.adapters import QuerySparseAttnProcessor, get_adapter

    adapter = get_adapter(transformer)
    _, module = adapter.self_attention_modules(transformer)[0]
    assert issubclass(adapter.make_processor, QuerySparseAttnProcessor)
    ours = list(inspect.signature(adapter.make_processor.__call__).parameters)
    assert ours == list(inspect.signature(type(module.processor).__call__).parameters)
