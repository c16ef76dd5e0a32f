"""What an adapter declares about one transformer family, and helpers shared by the families' processors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..kernels import gather_rows
from ..runtime import AccelRuntime, Selection


@dataclass
class ModelAdapter:
    """Declarative description of a transformer family.

    Args:
        name: short family name (``"wan"``).
        transformer_cls: the diffusers transformer class the adapter is keyed by.
        block_lists: attribute names of the ``ModuleList``s whose blocks get token selection.
        self_attention: attribute name (inside a block) of the self-attention module whose processor becomes
            query-sparse.
        token_wise: ``{submodule attribute: token layout}`` for the per-token submodules (cross-attention, FFN) that
            run on the selected rows only; layouts are ``"video"``, ``"text_video"``, ``"video_text"``.
        make_processor: ``(original_processor, runtime) -> processor`` for the self-attention module.
        grid_fn: ``(transformer, args, kwargs) -> (F', H', W')`` post-patch latent grid of a transformer call.
        rope_groups_fn: ``(transformer) -> (t, h, w)`` channels per head of each 3-D RoPE group, or ``None``.
        cfg_batched: whether the pipeline runs CFG as one batched call (2B) instead of two calls.
        timestep_fn: maps the transformer's ``timestep`` argument to the scheduler's timestep.
        token_wise_by_list: per block list, a ``token_wise`` dict replacing the default one (HunyuanVideo's dual- and
            single-stream blocks have different per-token submodules).
        token_counters: ``{submodule attribute: counter}`` overriding the statistics counter of a per-token
            submodule (default: ``"cross_attention_tokens"`` if ``"attn"`` is in the name, else ``"ffn_tokens"``);
            ``None`` counts nothing (for a second per-token linear of the same MLP, so tokens are not counted twice).
    """

    name: str
    transformer_cls: type
    block_lists: tuple[str, ...]
    self_attention: str
    token_wise: dict[str, str]
    make_processor: Callable[[Any, AccelRuntime], Any]
    grid_fn: Callable[[torch.nn.Module, tuple, dict], tuple[int, int, int]]
    rope_groups_fn: Callable[[torch.nn.Module], tuple[int, int, int] | None] = lambda m: None
    cfg_batched: bool = False
    timestep_fn: Callable[[Any], Any] = lambda t: t
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    token_wise_by_list: dict[str, dict[str, str]] = field(default_factory=dict)
    token_counters: dict[str, str | None] = field(default_factory=dict)

    def blocks(self, transformer: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        out = []
        for list_name in self.block_lists:
            for i, block in enumerate(getattr(transformer, list_name, None) or []):
                out.append((f"{list_name}.{i}", block))
        return out

    def token_wise_of(self, block_name: str) -> dict[str, str]:
        """The per-token submodules of the block ``block_name`` (``"<block list>.<i>"``)."""
        return self.token_wise_by_list.get(block_name.rsplit(".", 1)[0], self.token_wise)

    def counter_of(self, submodule: str) -> str | None:
        if submodule in self.token_counters:
            return self.token_counters[submodule]
        return "cross_attention_tokens" if "attn" in submodule else "ffn_tokens"

    def grid(self, transformer, args, kwargs):
        return self.grid_fn(transformer, args, kwargs)

    def step_timestep(self, t):
        return self.timestep_fn(t)


def bound_arg(name: str, position: int, args: tuple, kwargs: dict):
    """Fetch argument ``name`` that may be passed positionally at ``position``."""
    if name in kwargs:
        return kwargs[name]
    return args[position] if position < len(args) else None


class QuerySparseProcessorBase:
    """Common plumbing of the self-attention processors that replace a family's own.

    They keep the wrapped processor (used whenever no selection is active, so behaviour outside accelerated blocks is
    the family's own) and expose ``_attention_backend`` / ``_parallel_config`` forwarded to it, so diffusers'
    ``set_attention_backend`` and ``enable_parallelism`` keep reaching the real processor (see diffusers.md, G.4).
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, inner, runtime: AccelRuntime):
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "runtime", runtime)
        object.__setattr__(self, "_attention_backend", getattr(inner, "_attention_backend", None))
        object.__setattr__(self, "_parallel_config", getattr(inner, "_parallel_config", None))

    def __setattr__(self, key, value):
        object.__setattr__(self, key, value)
        if key in ("_attention_backend", "_parallel_config"):
            setattr(self.inner, key, value)

    def attend(self, sel: Selection, query, key, value, video_offset: int = 0):
        """Exact attention of the (already gathered) query rows over all keys; records the video rows' LSE.

        ``query``/``key``/``value`` are ``[B, S, H, D]`` (post-RoPE). ``video_offset`` is where the video rows start
        among the query rows (text rows of ``[text, video]`` joint attention come first).

        Two seams on the runtime let other methods plug in without touching the families' processors:
        ``runtime.qk_transforms`` (callables ``(processor, sel, q, k, video_offset) -> (q, k)``, e.g. score reuse)
        and ``runtime.attention_fn`` (``(q, k, v) -> (out, lse)``, e.g. a context-parallel version).
        """
        rt = self.runtime
        for transform in rt.qk_transforms:
            query, key = transform(self, sel, query, key, video_offset)
        out, lse = rt.attention_fn(query, key, value)
        video_lse = lse[:, video_offset:video_offset + sel.num_selected].mean(dim=-1)
        sel.lse = video_lse
        rt.count("attention_queries", video_lse.numel())
        rt.count("attention_keys", sel.num_video * query.shape[0])
        return out


def gather_rope_rows(freqs: torch.Tensor, index: torch.Tensor | None, batch: int) -> torch.Tensor:
    """Gather per-token RoPE rows. ``freqs`` is ``[1 or B, S, ...]``; returns ``[B, K, ...]`` (or unchanged)."""
    if index is None:
        return freqs
    return gather_rows(freqs.expand(batch, *freqs.shape[1:]), index)
