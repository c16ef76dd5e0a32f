"""Enabling context parallelism on a pipeline's transformers: the plan, the processors, diffusers' hooks, the checks.

Everything per family comes from the transformer's adapter (``cp_plan``, ``cp_text``, ``cp_processor``).
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig
from diffusers.hooks import HookRegistry
from diffusers.models import attention_dispatch as _ad

from ..adapters import QuerySparseProcessorBase
from ..runtime.handle import get_handle, transformers_of
from ..runtime.processors import set_processor
from .attention import install_cpu_lse_backend
from .check import CHECK_HOOK, ContextParallelCheckHook, adapter_or_none
from .distributed import parse_parallel


def resolve_cp_plan(transformer: torch.nn.Module, cp_plan: dict | None = None) -> dict:
    """The context-parallel plan for ``transformer``: ``cp_plan`` if given, else diffusers' ``_cp_plan``, else its
    adapter's ``cp_plan``. Raises naming the class when there is none."""
    if cp_plan is not None:
        return cp_plan
    plan = getattr(transformer, "_cp_plan", None)
    if plan:
        return plan
    adapter = adapter_or_none(transformer)
    if adapter is not None and adapter.cp_plan:
        return adapter.cp_plan
    raise ValueError(f"No context-parallel plan for {type(transformer).__name__}: diffusers has no `_cp_plan` for "
                     f"it and vdit-accel ships none. Pass `cp_plan=` (see diffusers' ContextParallelInput/"
                     f"ContextParallelOutput) or set `cp_plan` in its adapter (vdit_accel/adapters/).")


def replicated_text_keys(adapter) -> str | None:
    """Where the text keys sit (``"first"`` / ``"last"``) in the joint attention of a family whose plan keeps the
    text whole on every rank (``cp_text="whole"``); ``None`` otherwise (no text, or text split like the video)."""
    if adapter is None or adapter.cp_text != "whole":
        return None
    joint = getattr(adapter.make_processor, "joint", None)
    if joint not in ("text_first", "text_last"):
        raise ValueError(f"Adapter {adapter.name!r} keeps the text whole under context parallelism (cp_text='whole') "
                         f"but its processor declares no joint layout ('text_first' / 'text_last').")
    return "first" if joint == "text_first" else "last"


def _attention_modules(transformer):
    """Every attention module (anything with a ``processor``: diffusers' ``Attention``, ``AttentionModuleMixin`` and
    plain modules like Mochi's), for a transformer without an adapter."""
    return [(n, m) for n, m in transformer.named_modules() if getattr(m, "processor", None) is not None]


def install_cp_processor(transformer) -> None:
    """A family whose processor calls F.sdpa directly declares a dispatching one (its adapter's ``cp_processor``): it
    goes on the self-attention modules, also inside acceleration wrappers and in the acceleration handle's saved
    originals, so ``disable_acceleration`` restores the dispatching processor."""
    adapter = adapter_or_none(transformer)
    cls = adapter.cp_processor if adapter is not None else None
    if cls is None:
        return
    handle = get_handle(transformer)
    for name, module in adapter.self_attention_modules(transformer):
        proc = module.processor
        if isinstance(proc, QuerySparseProcessorBase):
            if not isinstance(proc.inner, cls):
                new = cls()
                new._attention_backend = getattr(proc.inner, "_attention_backend", None)
                object.__setattr__(proc, "inner", new)
                if handle is not None and name in handle.processors:
                    handle.processors[name] = new
        elif not isinstance(proc, cls):
            set_processor(module, cls())


def enable_parallelism(pipe_or_transformer, parallel: str | ContextParallelConfig = "ulysses", *,
                       cp_plan: dict | None = None):
    """Shard every transformer of a pipeline (or one transformer) over the ranks with diffusers' context parallelism.

    Args:
        pipe_or_transformer: a pipeline (``transformer`` and, for Wan 2.2, ``transformer_2``) or a transformer.
        parallel: ``"ulysses"``, ``"ring"`` (degree = world size), ``"ulysses=U,ring=R"`` (``U·R`` = world size) or
            a :class:`diffusers.ContextParallelConfig`.
        cp_plan: a diffusers context-parallel plan overriding the model's own / the adapter's.

    Checks first (nothing is changed when one fails): ``torch.distributed`` initialised, degrees multiply to the world
    size, a plan exists, heads divisible by the Ulysses degree, parallelism not already enabled. Sizes known only at
    call time (video tokens ``F'·H'·W'`` and, for joint-attention families, text tokens divisible by the world size)
    are checked by :class:`ContextParallelCheckHook` before the first block runs. Works with acceleration enabled
    before or after. Returns its argument.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("torch.distributed is not initialised: run under `torchrun --nproc-per-node N` and call "
                           "`vdit_accel.parallel.init_distributed()` first.")
    world = dist.get_world_size()
    cfg = parse_parallel(parallel, world)
    if isinstance(pipe_or_transformer, torch.nn.Module):
        transformers = [("transformer", pipe_or_transformer)]
    else:
        transformers = transformers_of(pipe_or_transformer)
        if not transformers:
            raise ValueError(f"{type(pipe_or_transformer).__name__} has no transformer to parallelise.")
    plans = {}
    for name, tr in transformers:  # validate everything before touching anything
        if getattr(tr, "_parallel_config", None) is not None:
            raise RuntimeError(f"Parallelism is already enabled on {name}; diffusers cannot enable it twice.")
        plans[name] = resolve_cp_plan(tr, cp_plan)
        heads = getattr(tr.config, "num_attention_heads", None)
        if heads is not None and heads % cfg.ulysses_degree:
            divisors = [d for d in range(2, heads + 1) if heads % d == 0 and world % d == 0]
            raise ValueError(f"{name} has {heads} attention heads, not divisible by the Ulysses degree "
                             f"{cfg.ulysses_degree}: Ulysses gives every rank heads/degree whole heads. Use a Ulysses "
                             f"degree that divides {heads} (here: {divisors or 'none'}) and make up the rest with "
                             f"ring, e.g. --parallel ring={world} or ulysses={divisors[-1] if divisors else 1},"
                             f"ring={world // (divisors[-1] if divisors else 1)}.")
    mesh = None
    for name, tr in transformers:
        tr_cfg = ContextParallelConfig(ulysses_degree=cfg.ulysses_degree, ring_degree=cfg.ring_degree,
                                       convert_to_fp32=cfg.convert_to_fp32, mesh=cfg.mesh or mesh)
        install_cp_processor(tr)
        if cfg.ring_degree > 1:
            use_lse_backend(tr)
        with cpu_accelerator_count():
            tr.enable_parallelism(config=tr_cfg, cp_plan=plans[name])
        mesh = tr._parallel_config.context_parallel_config._mesh
        adapter = adapter_or_none(tr)
        hook = ContextParallelCheckHook(plans[name], text_split=adapter is not None and adapter.cp_text == "split",
                                        text_keys=replicated_text_keys(adapter))
        HookRegistry.check_if_exists_or_initialize(tr).register_hook(hook, CHECK_HOOK)
        hook.sync(tr, check_processors=False)  # processors are checked at the first call (acceleration may follow)
    # Every rank leaves together. The device mesh's subgroups are built through the store that rank 0 hosts; a rank
    # that then fails fast (a bad input is caught at the first transformer call) and exits would otherwise take the
    # store down while a slower peer is still building them, and that peer would die of a broken pipe instead of
    # reporting the real error (seen in tests/test_parallel.py under load).
    dist.barrier()
    return pipe_or_transformer


def use_lse_backend(transformer) -> None:
    """Ring needs a backend that returns the LSE; diffusers' default ``native`` does not. Switch the processors that
    use the default backend to ``_native_flash`` (CUDA fp16/bf16; CPU through :func:`install_cpu_lse_backend`)."""
    install_cpu_lse_backend()
    active, _ = _ad._AttentionBackendRegistry.get_active_backend()
    adapter = adapter_or_none(transformer)
    modules = (adapter.self_attention_modules(transformer) if adapter else []) or _attention_modules(transformer)
    for _, module in modules:
        proc = module.processor
        if proc is None or not hasattr(proc, "_attention_backend"):
            continue
        backend = proc._attention_backend or active
        if _ad.AttentionBackendName(backend) == _ad.AttentionBackendName.NATIVE:
            proc._attention_backend = _ad.AttentionBackendName._NATIVE_FLASH.value


@contextlib.contextmanager
def cpu_accelerator_count():
    """diffusers' ``_resolve_parallel_config`` does ``rank % torch.accelerator.device_count()``; on a CPU-only torch
    that count is 0. Report 1 for the duration of the block (device type stays ``cpu``, the mesh uses gloo)."""
    original = torch.accelerator.device_count
    if original() >= 1:
        yield
        return
    torch.accelerator.device_count = lambda *a, **k: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original
