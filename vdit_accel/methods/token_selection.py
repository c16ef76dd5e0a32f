"""Token selection with block-output reuse (Astraea, arXiv 2506.05096), on diffusers' hook machinery.

Per block, per denoising step and per CFG branch (diffusers ``cache_context``), the block hook

1. scores every video token: ``S = w_α · LSE_prev · Δ + w_β · exp(n_skip)``,
2. keeps the top ``ceil(θ·N)`` (θ is the step's budget) and publishes them as the runtime's :class:`Selection`,
3. runs the block: self-attention is query-sparse (the adapter's processor: selected queries, all keys/values,
   exact rows and their LSE), the per-token submodules (cross-attention, FFN) run on the selected rows only
   (:class:`RowSubsetHook`), element-wise work (norms, gates) runs on all rows and costs O(N·C),
4. merges: selected tokens take their fresh output; the others reuse their cached residual (or raw output).
"""

from __future__ import annotations

import math

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks._helpers import TransformerBlockRegistry
from diffusers.hooks.hooks import BaseState

from ..config import TokenSelectionConfig
from ..kernels import gather_rows
from ..runtime import AccelRuntime, ContextStateManager, Selection
from ..runtime.processors import set_processor

BLOCK_HOOK = "vdit_accel_token_selection"
ROWS_HOOK = "vdit_accel_token_rows"


class BlockCacheState(BaseState):
    """Per block and per CFG branch: what the scorer and the reuse need from the last computation of each token."""

    def __init__(self):
        self.reset()

    def reset(self, *args, **kwargs) -> None:
        self.last_input: torch.Tensor | None = None  # [B, N, C] block input when each token was last computed
        self.cached: torch.Tensor | None = None  # [B, N, C] residual (output - input) or raw output
        self.lse: torch.Tensor | None = None  # [B, N] fp32 LSE (mean over heads) of the last computation
        self.n_skip: torch.Tensor | None = None  # [B, N] consecutive skipped steps
        self.step: int = -1

    def is_valid_for(self, x: torch.Tensor, step: int) -> bool:
        return (self.last_input is not None and self.last_input.shape == x.shape and self.lse is not None
                and step > self.step)


@torch.compiler.disable
def select_tokens(state: BlockCacheState, x: torch.Tensor, budget: float, cfg: TokenSelectionConfig):
    """Top-``ceil(budget·N)`` tokens by the Astraea score; ``None`` means compute all. Returns sorted ``[B, K]``."""
    n = x.shape[1]
    k = min(n, max(cfg.min_tokens, math.ceil(budget * n - 1e-9)))
    if k >= n:
        return None
    delta = (x - state.last_input).float().norm(dim=-1)  # [B, N]
    significance = state.lse.clamp_min(0) * delta
    if cfg.normalize_significance:
        significance = significance / significance.mean(dim=1, keepdim=True).clamp_min(1e-12)
    score = cfg.w_alpha * significance + cfg.w_beta * torch.exp(state.n_skip.float())
    return score.topk(k, dim=1, sorted=False).indices.sort(dim=1).values


class TokenSelectionBlockHook(ModelHook):
    """Replaces a block's forward with: select tokens, run the block on them, merge with the cached results."""

    _is_stateful = True

    def __init__(self, runtime: AccelRuntime, config: TokenSelectionConfig, block_name: str):
        super().__init__()
        self.runtime = runtime
        self.config = config
        self.block_name = block_name
        self.state_manager = ContextStateManager(BlockCacheState)
        self.metadata = None

    def initialize_hook(self, module):
        self.metadata = TransformerBlockRegistry.get(type(module))
        return module

    def new_forward(self, module, *args, **kwargs):
        rt = self.runtime
        md = self.metadata
        x = md._get_parameter_from_args_kwargs(md.hidden_states_argument_name, args, kwargs)
        state = self.state_manager.get_state()
        if state.last_input is not None and (state.last_input.shape != x.shape or rt.step <= state.step):
            state.reset()  # a new run, or a new resolution / batch size
        budget = rt.budget if state.is_valid_for(x, rt.step) else 1.0
        selector = rt.extras.get("select_tokens", select_tokens)  # seam: per-shard selection (parallel.py)
        index = selector(state, x, budget, self.config) if budget < 1.0 else None
        text_len = 0
        if md.encoder_hidden_states_argument_name:
            enc = md._get_parameter_from_args_kwargs(md.encoder_hidden_states_argument_name, args, kwargs)
            text_len = 0 if enc is None else enc.shape[1]
        sel = Selection(num_video=x.shape[1], index=index, text_len=text_len, block_name=self.block_name)
        rec = rt.current
        if rec is not None:
            rec.batch, rec.video_tokens = x.shape[0], x.shape[1]
            rec.blocks += 1
        if rt.record_masks and index is not None:
            rt.masks[(rt.step, rt.context)][self.block_name] = index.cpu()
        previous, rt.selection = rt.selection, sel
        try:
            output = self.fn_ref.original_forward(*args, **kwargs)
        finally:
            rt.selection = previous
        is_tuple = isinstance(output, tuple)
        y = output[md.return_hidden_states_index] if is_tuple else output
        y = self._merge(state, x, y, sel)
        state.step = rt.step
        if not is_tuple:
            return y
        output = list(output)
        output[md.return_hidden_states_index] = y
        return tuple(output)

    def _merge(self, state: BlockCacheState, x: torch.Tensor, y: torch.Tensor, sel: Selection) -> torch.Tensor:
        residual_mode = self.config.cache == "residual"
        lse = sel.lse if sel.lse is not None else torch.zeros(x.shape[:2], device=x.device)
        if sel.index is None:
            state.last_input = x.detach().clone()
            state.cached = (y - x) if residual_mode else y.detach().clone()
            state.lse = lse.float()
            state.n_skip = torch.zeros(x.shape[:2], device=x.device, dtype=torch.int32)
            return y
        idx = sel.index
        view = idx.unsqueeze(-1).expand(-1, -1, y.shape[-1])
        y_sel = gather_rows(y, idx)
        x_sel = gather_rows(x, idx)
        merged = (x + state.cached.to(x.dtype)) if residual_mode else state.cached.clone().to(y.dtype)
        merged.scatter_(1, view, y_sel)
        state.cached.scatter_(1, view, (y_sel - x_sel) if residual_mode else y_sel)
        state.last_input.scatter_(1, view, x_sel)
        state.lse.scatter_(1, idx, lse.float())
        state.n_skip += 1
        state.n_skip.scatter_(1, idx, 0)
        return merged

    def reset_state(self, module):
        self.state_manager.reset()
        return module


class RowSubsetHook(ModelHook):
    """Runs a per-token submodule (cross-attention, FFN) on the selected rows only and scatters the result back into
    a full-length tensor (unselected rows are zero; the block hook replaces them with cached results)."""

    def __init__(self, runtime: AccelRuntime, layout: str, counter: str | None):
        super().__init__()
        self.runtime = runtime
        self.layout = layout
        self.counter = counter

    def new_forward(self, module, hidden_states, *args, **kwargs):
        sel = self.runtime.selection
        if sel is None:
            return self.fn_ref.original_forward(hidden_states, *args, **kwargs)
        seq_len = hidden_states.shape[1]
        rows = sel.gather(hidden_states, self.layout)
        if self.counter is not None:
            self.runtime.count(self.counter, rows.shape[0] * (rows.shape[1] - (seq_len - sel.num_video)))
        out = self.fn_ref.original_forward(rows, *args, **kwargs)
        return sel.scatter(out, seq_len, self.layout)


def apply_token_selection(transformer: torch.nn.Module, adapter, runtime: AccelRuntime,
                          config: TokenSelectionConfig) -> dict[str, object]:
    """Install the block hooks, row-subset hooks and query-sparse processors. Returns the replaced processors
    ``{module name: original processor}`` so :func:`remove_token_selection` can restore them exactly."""
    originals: dict[str, object] = {}
    for block_name, block in adapter.blocks(transformer):
        attn = getattr(block, adapter.self_attention)
        originals[f"{block_name}.{adapter.self_attention}"] = attn.processor
        for sub, layout in adapter.token_wise_of(block_name).items():
            HookRegistry.check_if_exists_or_initialize(getattr(block, sub)).register_hook(
                RowSubsetHook(runtime, layout, adapter.counter_of(sub)), ROWS_HOOK)
        HookRegistry.check_if_exists_or_initialize(block).register_hook(
            TokenSelectionBlockHook(runtime, config, block_name), BLOCK_HOOK)
    for name, proc in originals.items():
        set_processor(transformer.get_submodule(name), adapter.make_processor(proc, runtime))
    return originals


def remove_token_selection(transformer: torch.nn.Module, adapter, originals: dict[str, object]) -> None:
    for block_name, block in adapter.blocks(transformer):
        for sub in adapter.token_wise_of(block_name):
            registry = getattr(getattr(block, sub), "_diffusers_hook", None)
            if registry is not None:
                registry.remove_hook(ROWS_HOOK, recurse=False)
        registry = getattr(block, "_diffusers_hook", None)
        if registry is not None:
            registry.remove_hook(BLOCK_HOOK, recurse=False)
    for name, proc in originals.items():
        set_processor(transformer.get_submodule(name), proc)
