"""The outermost hook of a context-parallel transformer: size checks before any block runs, diffusers' split/gather
hooks kept outermost, and the accelerated transformer's attention pointed at the context-parallel version."""

from __future__ import annotations

import torch
from diffusers.hooks import ModelHook

from ..adapters import QuerySparseProcessorBase, get_adapter
from ..kernels import query_sparse_attention
from ..runtime.handle import get_handle
from .attention import make_cp_attention_fn

CHECK_HOOK = "vdit_accel_cp_check"
CP_HOOK_PREFIXES = ("cp_input---", "cp_output---")  # the names diffusers gives its split/gather hooks


def adapter_or_none(transformer):
    """The transformer's adapter, or ``None`` for a model vdit-accel does not accelerate (diffusers' own plan can
    still run it densely under context parallelism)."""
    try:
        return get_adapter(transformer)
    except ValueError:
        return None


class ContextParallelCheckHook(ModelHook):
    """Outermost hook of a context-parallel transformer. Before any block runs it

    * validates the sizes: video tokens ``F'·H'·W'`` (and text tokens for joint-attention families) divisible by the
      world size, raising a ``ValueError`` that names the sizes and the fix (the same on every rank, so every rank
      stops before its first collective);
    * keeps diffusers' CP split/gather hooks outermost on their modules (acceleration enabled after parallelism
      registers its block hooks outside them otherwise, and token selection would see the whole sequence);
    * points an accelerated transformer's ``runtime.attention_fn`` at the context-parallel query-sparse attention.
    """

    def __init__(self, plan: dict, text_split: bool = False, text_keys: str | None = None):
        super().__init__()
        self.plan = plan
        self.text_split = text_split
        self.text_keys = None if text_split else text_keys  # where replicated text keys sit in joint attention
        self._synced_handle = None
        self._checked = False

    def pre_forward(self, module, *args, **kwargs):
        self.validate(module, args, kwargs)
        self.sync(module)
        return args, kwargs

    def validate(self, module, args, kwargs) -> None:
        cp = module._parallel_config.context_parallel_config
        world = cp.ring_degree * cp.ulysses_degree
        adapter = adapter_or_none(module)
        if adapter is not None:
            f, h, w = adapter.grid(module, args, kwargs)
            n = f * h * w
            if n % world:
                raise ValueError(
                    f"Context parallelism over {world} ranks needs the video tokens F'·H'·W' divisible by {world}, "
                    f"but this call has F'×H'×W' = {f}×{h}×{w} = {n} (post-patch latent grid). Choose num_frames / "
                    f"height / width so that one of F', H', W' (or their product) is divisible by {world}, e.g. a "
                    f"height or width that is a multiple of {world}×(VAE factor)×(patch size).")
        if self.text_split:
            text = kwargs.get("encoder_hidden_states")
            if text is None and len(args) > 1:
                text = args[1]
            if torch.is_tensor(text) and text.shape[1] % world:
                raise ValueError(
                    f"{type(module).__name__} runs joint [text, video] attention, so context parallelism splits the "
                    f"text tokens too: {text.shape[1]} text tokens are not divisible by the {world} ranks. Pass "
                    f"`max_sequence_length` = a multiple of {world} (e.g. "
                    f"{text.shape[1] - text.shape[1] % world}) to the pipeline, or use a world size that divides "
                    f"{text.shape[1]}.")

    def sync(self, module, check_processors: bool = True) -> None:
        handle = get_handle(module)
        ensure_cp_hooks_outermost(module, self.plan)
        if handle is not None:
            rt = handle.runtime
            if rt.qk_transforms:
                raise RuntimeError("Attention-score reuse (reuse=...) works on the whole (F', H', W') token grid and "
                                   "is not supported under context parallelism (each rank holds a shard). Enable "
                                   "acceleration without `reuse`, or run on one device.")
            fn = rt.attention_fn
            if getattr(fn, "_vdit_accel_cp", None) is not module._parallel_config:
                if fn is not query_sparse_attention and not hasattr(fn, "_vdit_accel_cp"):
                    raise RuntimeError(f"The accelerated transformer has a custom runtime.attention_fn ({fn!r}) that "
                                       f"context parallelism would replace; it is not supported under parallelism.")
                rt.attention_fn = make_cp_attention_fn(module._parallel_config, rt, self.text_keys)
        if check_processors and (self._synced_handle is not handle or not self._checked):
            verify_processors(module, accelerated=handle is not None)
            self._synced_handle, self._checked = handle, True


def verify_processors(transformer, accelerated: bool) -> None:
    """Every self-attention processor must have received the parallel config, or attention would silently see the
    local shard only. An acceleration wrapper attends through ``runtime.attention_fn`` in every accelerated block, so
    there the wrapper is checked; without acceleration the family's own processor runs and is checked."""
    adapter = adapter_or_none(transformer)
    if adapter is None:
        return
    for name, module in adapter.self_attention_modules(transformer):
        proc = module.processor
        if isinstance(proc, QuerySparseProcessorBase):
            if not accelerated:
                proc = proc.inner
            elif proc._parallel_config is None:
                # acceleration enabled after parallelism around a processor diffusers skipped (no attribute): the
                # wrapper attends through runtime.attention_fn; mark the wrapper only, never the family's processor
                object.__setattr__(proc, "_parallel_config", transformer._parallel_config)
        own_processor_wrong = not accelerated and adapter.cp_text == "whole"
        if own_processor_wrong or getattr(proc, "_parallel_config", None) is None:
            raise RuntimeError(
                f"{name}: processor {type(proc).__name__} cannot run {type(transformer).__name__} under context "
                f"parallelism: it has no `_parallel_config` (it calls F.scaled_dot_product_attention directly) and "
                f"would attend to the local shard only, or, for joint attention with the text whole on every rank, "
                f"would count the text keys once per rank. Enable acceleration (token selection; "
                f"budget 1.0 for a dense run) so attention goes through vdit-accel's context-parallel attention, or "
                f"use a processor that dispatches through diffusers.")


def ensure_cp_hooks_outermost(transformer, plan: dict) -> None:
    """On every module of the plan (except the transformer itself), move diffusers' CP hooks after (= outside) any
    hook registered later, e.g. acceleration's block hooks. Hooks are removed from the end of the chain only (LIFO
    removal is exact in ``HookRegistry``) and re-registered in the order: other hooks, then the CP hooks."""
    from diffusers.hooks.context_parallel import _get_submodule_by_name

    for module_id in plan:
        if module_id == "":
            continue
        modules = _get_submodule_by_name(transformer, module_id)
        for m in modules if isinstance(modules, list) else [modules]:
            reg = getattr(m, "_diffusers_hook", None)
            if reg is None:
                continue
            order = list(reg._hook_order)
            is_cp = [n.startswith(CP_HOOK_PREFIXES) for n in order]
            if True not in is_cp:
                continue
            first_cp = is_cp.index(True)
            if all(is_cp[first_cp:]):
                continue
            tail = order[first_cp:]
            hooks = {n: reg.hooks[n] for n in tail}
            for n in reversed(tail):
                reg.remove_hook(n, recurse=False)
            for n in [n for n in tail if not n.startswith(CP_HOOK_PREFIXES)]:
                reg.register_hook(hooks[n], n)
            for n in [n for n in tail if n.startswith(CP_HOOK_PREFIXES)]:
                reg.register_hook(hooks[n], n)
    root = getattr(transformer, "_diffusers_hook", None)
    if root is not None:
        root.invalidate_child_registries_cache()
