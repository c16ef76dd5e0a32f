"""What an adapter declares about one transformer family, the FLOP model's unit, and the template of the families'
query-sparse self-attention processors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..kernels import gather_rows, query_sparse_attention
from .joint import attend_joint
from .sizes import SizeRules, size_rules_from_pipe

if TYPE_CHECKING:  # annotations only: `runtime` imports the cost model, which imports this module
    from ..runtime import AccelRuntime, Selection


@dataclass
class BlockFlops:
    """Multiply-add FLOPs (×2) of one block, split by how they respond to the token budget θ."""

    dense: float  # FLOPs that do not shrink with θ
    scalable: float  # FLOPs at θ = 1 that shrink linearly with θ

    def at(self, budget: float) -> float:
        return self.dense + self.scalable * budget

    @property
    def dense_fraction(self) -> float:
        return self.dense / (self.dense + self.scalable)


def video_block_flops(config, num_video: int, num_text: int = 0) -> BlockFlops:
    """FLOPs of a block with self-attention over the video tokens, cross-attention to the text and an FFN (Wan's
    layout; also the estimate used for LTX, HunyuanVideo and Mochi). Reads ``num_attention_heads``,
    ``attention_head_dim`` and ``ffn_dim`` (``4·C`` when absent) from ``config``."""
    c = config.num_attention_heads * config.attention_head_dim
    ffn = getattr(config, "ffn_dim", None) or 4 * c
    n, t = num_video, num_text
    # self-attention: q,o per query token; k,v for all tokens; QK^T and PV over all n keys
    # cross-attention: q,o per token, k,v on the text once; attention over t text tokens
    dense = 2 * (2 * c * c * n) + 2 * (2 * c * c * t)
    scalable = n * 2 * (2 * c * c + 2 * n * c + 2 * c * c + 2 * t * c + 2 * c * ffn)
    return BlockFlops(dense, scalable)


@dataclass
class ModelAdapter:
    """Declarative description of a transformer family: the only place that knows the family.

    Args:
        name: short family name (``"wan"``).
        transformer_cls: the diffusers transformer class the adapter is keyed by.
        block_lists: attribute names of the ``ModuleList``s whose blocks get token selection.
        self_attention: attribute name (inside a block) of the self-attention module whose processor becomes
            query-sparse.
        token_wise: ``{submodule attribute: token layout}`` for the per-token submodules (cross-attention, FFN) that
            run on the selected rows only; layouts are ``"video"``, ``"text_video"``, ``"video_text"``.
        make_processor: ``(original_processor, runtime) -> processor`` for the self-attention module (usually a
            :class:`QuerySparseAttnProcessor` subclass).
        grid_fn: ``(transformer, args, kwargs) -> (F', H', W')`` post-patch latent grid of a transformer call.
        rope_groups_fn: ``(transformer) -> (t, h, w)`` channels per head of each 3-D RoPE group, or ``None``.
        cfg_batched: whether the pipeline runs CFG as one batched call (2B) instead of two calls.
        timestep_fn: maps the transformer's ``timestep`` argument to the scheduler's timestep.
        token_wise_by_list: per block list, a ``token_wise`` dict replacing the default one (HunyuanVideo's dual- and
            single-stream blocks have different per-token submodules).
        token_counters: ``{submodule attribute: counter}`` overriding the statistics counter of a per-token
            submodule (default: ``"cross_attention_tokens"`` if ``"attn"`` is in the name, else ``"ffn_tokens"``);
            ``None`` counts nothing (for a second per-token linear of the same MLP, so tokens are not counted twice).
        cp_plan: a diffusers context-parallel plan (``ContextParallelInput`` / ``ContextParallelOutput`` by module
            name) for a family diffusers ships none for; ``None`` uses the model's own ``_cp_plan``.
        cp_text: how that plan treats the text of joint attention: ``"split"`` (the text is sharded with the video,
            so its length must divide by the world size) or ``"whole"`` (every rank keeps all the text; only
            vdit-accel's attention, which counts those keys once, is right then). ``None``: no joint text.
        cp_processor: a processor class installed on the self-attention modules under context parallelism when the
            family's own processor calls ``F.scaled_dot_product_attention`` directly (it would see the local shard
            only); it must dispatch through diffusers' ``dispatch_attention_fn``.
        flops: ``(config, num_video, num_text) -> BlockFlops``, the FLOP model of one block (``vdit_accel.cost``).
        size_rules: ``(pipe) -> SizeRules``, the sizes a pipeline of this family can generate.
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
    token_wise_by_list: dict[str, dict[str, str]] = field(default_factory=dict)
    token_counters: dict[str, str | None] = field(default_factory=dict)
    cp_plan: dict | None = None
    cp_text: str | None = None
    cp_processor: type | None = None
    flops: Callable[[Any, int, int], BlockFlops] = video_block_flops
    size_rules: Callable[[Any], SizeRules] = size_rules_from_pipe

    def __post_init__(self):
        if self.cp_text not in (None, "split", "whole"):
            raise ValueError(f"ModelAdapter {self.name!r}: cp_text must be 'split', 'whole' or None, "
                             f"got {self.cp_text!r}.")

    def blocks(self, transformer: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        out = []
        for list_name in self.block_lists:
            for i, block in enumerate(getattr(transformer, list_name, None) or []):
                out.append((f"{list_name}.{i}", block))
        return out

    def self_attention_modules(self, transformer: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
        """``[(qualified name, module)]`` of the self-attention module of every accelerated block."""
        return [(f"{name}.{self.self_attention}", getattr(block, self.self_attention))
                for name, block in self.blocks(transformer)]

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
        if rt.attention_fn is query_sparse_attention and self._attention_backend is not None:
            # the backend the user chose with set_attention_backend (used where it returns the LSE; else logged once)
            out, lse = query_sparse_attention(query, key, value, attention_backend=self._attention_backend)
        else:
            out, lse = rt.attention_fn(query, key, value)
        video_lse = lse[:, video_offset:video_offset + sel.num_selected].mean(dim=-1)
        sel.lse = video_lse
        rt.count("attention_queries", video_lse.numel())
        rt.count("attention_keys", sel.num_video * query.shape[0])
        return out


class QuerySparseAttnProcessor(QuerySparseProcessorBase):
    """The query-sparse self-attention, written once: guard → gather → project → RoPE → attend → scatter.

    Queries are computed for the selected video tokens only (and, in joint attention, every text token); keys and
    values for all tokens, so each selected row is exactly the dense row. A family overrides small hooks:

    * :meth:`applies` (guard): whether this call is the block's self-attention (else the family's own processor runs);
    * :meth:`project` (gather + project): ``(video (q, k, v), text (q, k, v) or None)``, the video queries of the
      selected rows only (``sel.gather``);
    * :meth:`rope`: RoPE on the video queries/keys; returns them as ``[B, S, H, D]``;
    * :meth:`text_mask` (joint attention): the ``[B, T]`` valid-text mask, or ``None``;
    * :meth:`output`: the output projections of the video (and text) rows.

    ``joint`` is ``None`` for video-only self-attention, ``"text_first"`` / ``"text_last"`` for joint attention over
    ``[text, video]`` / ``[video, text]``; ``zero_padded_text`` gives padded text queries a zero output (Mochi).
    Each family writes ``__call__`` with its own processor's signature (diffusers passes only the keyword arguments
    that signature names) and calls :meth:`run`.
    """

    joint: str | None = None
    zero_padded_text = False

    def run(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        sel = self.runtime.selection
        if sel is None or not self.applies(attn, encoder_hidden_states, attention_mask):
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        n_video = hidden_states.shape[1]
        video, text = self.project(attn, sel, hidden_states, encoder_hidden_states)
        video = self.rope(attn, sel, video, rotary_emb)
        if self.joint is None:
            video_out, text_out = self.attend(sel, *video), None
        else:
            video_out, text_out = attend_joint(self, sel, video, text, self.text_mask(attention_mask, text),
                                               text_first=self.joint == "text_first",
                                               zero_padded_text=self.zero_padded_text)
        video_out, text_out = self.output(attn, video_out, text_out, video[0].dtype)
        video_out = sel.scatter(video_out, n_video)
        return video_out if text_out is None else (video_out, text_out)

    def applies(self, attn, encoder_hidden_states, attention_mask) -> bool:
        """Video-only self-attention by default: no text and no mask in this call."""
        return encoder_hidden_states is None and attention_mask is None

    def project(self, attn, sel: Selection, hidden_states, encoder_hidden_states):
        """``to_q`` of the selected rows, ``to_k`` / ``to_v`` of all rows, split into heads, ``norm_q`` / ``norm_k``
        per head; no text."""
        return project_heads(attn, sel.gather(hidden_states), hidden_states), None

    def rope(self, attn, sel: Selection, qkv, rotary_emb):
        return qkv

    def text_mask(self, attention_mask, text_qkv):
        return attention_mask

    def output(self, attn, video_out, text_out, dtype):
        """``to_out`` on the video rows and ``to_add_out`` on the text rows, where the module has them."""
        video_out = video_out.flatten(2, 3).to(dtype)
        if getattr(attn, "to_out", None) is not None:
            video_out = attn.to_out[1](attn.to_out[0](video_out))
        if text_out is not None:
            text_out = text_out.flatten(2, 3).to(dtype)
            if getattr(attn, "to_add_out", None) is not None:
                text_out = attn.to_add_out(text_out)
        return video_out, text_out


def project_heads(attn, x_q, x_kv, projections=None, norms=None):
    """``(q, k, v)`` ``[B, S, H, D]``: ``projections`` (default ``attn.to_q/k/v``) of ``x_q`` (queries) and ``x_kv``,
    split into ``attn.heads`` heads, with ``norms`` (default ``attn.norm_q`` / ``attn.norm_k``, skipped when
    ``None``) on the queries and keys per head."""
    to_q, to_k, to_v = projections or (attn.to_q, attn.to_k, attn.to_v)
    norm_q, norm_k = norms or (attn.norm_q, attn.norm_k)
    heads = (attn.heads, -1)
    q, k, v = to_q(x_q).unflatten(2, heads), to_k(x_kv).unflatten(2, heads), to_v(x_kv).unflatten(2, heads)
    if norm_q is not None:
        q = norm_q(q)
    if norm_k is not None:
        k = norm_k(k)
    return q, k, v


def rope_selected(qkv, sel: Selection, freqs, apply: Callable, add_batch_dim: bool = False):
    """Apply ``apply(x, cos, sin)`` to the selected queries (with their own rows of ``cos``/``sin``) and to all keys.

    ``freqs`` is ``(cos, sin)`` with the tokens on dim 1 (``[1 or B, S, ...]``) or, with ``add_batch_dim``, on dim 0.
    """
    q, k, v = qkv
    cos, sin = freqs
    if add_batch_dim:
        cos, sin = cos.unsqueeze(0), sin.unsqueeze(0)
    b = q.shape[0]
    return apply(q, gather_rope_rows(cos, sel.index, b), gather_rope_rows(sin, sel.index, b)), apply(k, cos, sin), v


def gather_rope_rows(freqs: torch.Tensor, index: torch.Tensor | None, batch: int) -> torch.Tensor:
    """Gather per-token RoPE rows. ``freqs`` is ``[1 or B, S, ...]``; returns ``[B, K, ...]`` (or unchanged)."""
    if index is None:
        return freqs
    return gather_rows(freqs.expand(batch, *freqs.shape[1:]), index)
