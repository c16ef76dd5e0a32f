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

from dataclasses import dataclass

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks._helpers import TransformerBlockRegistry
from diffusers.hooks.hooks import BaseState

from ..checks import check_number
from ..kernels import gather_rows
from ..runtime import AccelRuntime, ContextStateManager, Selection
from ..runtime.processors import ProcessorSwap
from . import register_method
from .forecast import TaylorForecast
from .step_forecast import STEP_FORECAST_HOOK, StepForecastHook
from .token_counts import bucket_count, budget_size_hint, selected_count

BLOCK_HOOK = "vdit_accel_token_selection"
ROWS_HOOK = "vdit_accel_token_rows"
CACHE_MODES = ("output", "residual", "forecast")
CACHE_DTYPES = (None, "float32", "bfloat16", "float16")


@dataclass
class TokenSelectionConfig:
    """Token selection with block-output reuse (Astraea, arXiv 2506.05096).

    Per block, step and CFG branch, every video token gets the score
    ``w_alpha * LSE_prev * Δ + w_beta * exp(n_skip)`` and the top ``ceil(θ·N)`` tokens run the block; the rest
    reuse their cached result.

    Args:
        w_alpha (`float`, defaults to 1.0):
            Weight of the significance term ``LSE_prev · Δ`` (previous attention log-sum-exp times how much the
            token's block input moved since it was last computed).
        w_beta (`float`, defaults to 0.5):
            Weight of the staleness penalty ``exp(n_skip)``. Higher refreshes long-skipped tokens sooner (less
            drift, less freedom to follow the significance term). Published optimum ≈ 0.5.
        cache (`str`, defaults to ``"output"``):
            What a token that is not recomputed takes: ``"output"`` its cached raw block output (stale);
            ``"residual"`` its current input plus the cached block residual (output − input); ``"forecast"`` a
            per-token first-order Taylor forecast along the timestep axis from the steps at which that token was last
            computed (TaylorSeer's idea per token, :mod:`vdit_accel.methods.forecast`). Measured on the bundled model
            in benchmarks/results/cache_modes.md. (Skipped steps, budget 0, always forecast the transformer's output:
            :mod:`vdit_accel.methods.step_forecast`.)
        forecast_order (`int`, defaults to 1):
            Taylor order of the forecasts: 1 (linear) or 2 (quadratic, one more cached tensor per block).
        forecast_horizon (`float`, *optional*, defaults to 0.5):
            Cap on how far a token's forecast extrapolates, in units of its last computed interval; ``None`` is
            unbounded. The tokens left out are the ones the scorer expects to change least, often for several steps:
            a full-length extrapolation overshoots for them (bundled model, θ = 0.7: 24.0 dB at 1.0, 42.9 dB at 0.5,
            41.5 dB for stale outputs; benchmarks/results/cache_modes.md).
        cache_dtype (`str`, *optional*):
            Storage dtype of the per-block caches: ``None`` keeps the model's dtype; ``"bfloat16"`` / ``"float16"``
            halve the cache memory of an fp32 model (benchmarks/results/cache_modes.md has the quality cost).
        dense_fast_path (`bool`, defaults to True):
            A dense step that no later step of the run needs per-block caches from (a run of dense and skipped steps,
            or the dense steps after the last token-selected one) runs the family's own processors with no
            bookkeeping, at the cost of a plain dense step; likewise a computed step keeps its output for the
            skipped-step forecast only when a later step is skipped. The budget search turns it off: its prefix
            sharing needs each step's state to depend on the budgets so far only.
        normalize_significance (`bool`, defaults to True):
            Divide ``LSE·Δ`` by its per-sample mean, so ``w_beta`` means the same on every model whatever the scale
            of its hidden states. With False the published formula is used verbatim.
        min_tokens (`int`, defaults to 1):
            Lower bound on the number of tokens recomputed per block.
        token_buckets (`int`, *optional*, defaults to 20):
            Round each budget up to a multiple of ``1/token_buckets`` before it becomes a token count (``k =
            ceil(ceil(θ·T)/T · N)``, :mod:`.token_counts`), in eager and compiled runs alike. A run then has at most
            ``token_buckets`` distinct counts per resolution, which bounds what ``torch.compile`` compiles. 20 keeps
            budgets in steps of 0.05 (0.4, 0.5, 0.7, ...) exact and costs at most N/20 extra tokens otherwise.
            ``None``: the exact ``ceil(θ·N)`` (one compiled graph per distinct budget).
    """

    w_alpha: float = 1.0
    w_beta: float = 0.5
    cache: str = "output"
    normalize_significance: bool = True
    min_tokens: int = 1
    forecast_order: int = 1
    forecast_horizon: float | None = 0.5
    cache_dtype: str | None = None
    dense_fast_path: bool = True
    token_buckets: int | None = 20

    def __post_init__(self):
        check_number("TokenSelectionConfig.w_alpha", self.w_alpha, 0.0, None, " Example: w_alpha=1.0.")
        check_number("TokenSelectionConfig.w_beta", self.w_beta, 0.0, None, " Example: w_beta=0.5.")
        if self.cache not in CACHE_MODES:
            raise ValueError(f"`TokenSelectionConfig.cache` must be one of {CACHE_MODES}, got {self.cache!r}.")
        if not isinstance(self.normalize_significance, bool):
            raise TypeError(f"`TokenSelectionConfig.normalize_significance` must be a bool, got "
                            f"{self.normalize_significance!r}.")
        if isinstance(self.min_tokens, bool) or not isinstance(self.min_tokens, int) or self.min_tokens < 1:
            raise ValueError(f"`TokenSelectionConfig.min_tokens` must be an int >= 1, got {self.min_tokens!r}.")
        if isinstance(self.forecast_order, bool) or self.forecast_order not in (1, 2):
            raise ValueError(f"`TokenSelectionConfig.forecast_order` must be 1 or 2, got {self.forecast_order!r}.")
        if self.forecast_horizon is not None:
            check_number("TokenSelectionConfig.forecast_horizon", self.forecast_horizon, 0.0, None,
                         " Use None for unbounded extrapolation.")
        if self.cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"`TokenSelectionConfig.cache_dtype` must be one of {CACHE_DTYPES}, got "
                             f"{self.cache_dtype!r}.")
        if not isinstance(self.dense_fast_path, bool):
            raise TypeError(f"`TokenSelectionConfig.dense_fast_path` must be a bool, got {self.dense_fast_path!r}.")
        if self.token_buckets is not None and (isinstance(self.token_buckets, bool) or not isinstance(
                self.token_buckets, int) or self.token_buckets < 1):
            raise ValueError(f"`TokenSelectionConfig.token_buckets` must be an int >= 1 or None (exact counts), got "
                             f"{self.token_buckets!r}.")


class BlockCacheState(BaseState):
    """Per block and per CFG branch: what the scorer and the reuse need from the last computation of each token."""

    def __init__(self):
        self.reset()

    def reset(self, *args, **kwargs) -> None:
        self.last_input: torch.Tensor | None = None  # [B, N, C] block input when each token was last computed
        self.cached: torch.Tensor | None = None  # [B, N, C] residual (output - input) or raw output
        self.forecast: TaylorForecast | None = None  # cache="forecast": per-token Taylor history of the output
        self.lse: torch.Tensor | None = None  # [B, N] fp32 LSE (mean over heads) of the last computation
        self.n_skip: torch.Tensor | None = None  # [B, N] consecutive skipped steps
        self.step: int = -1

    @property
    def reuse_source(self) -> torch.Tensor | None:
        """What tokens that are not recomputed derive from: the cached tensor, or the forecast's last values."""
        return self.forecast.value if self.forecast is not None else self.cached

    def nbytes(self) -> int:
        tensors = (self.last_input, self.cached, self.lse, self.n_skip)
        own = sum(t.numel() * t.element_size() for t in tensors if t is not None)
        return own + (self.forecast.nbytes() if self.forecast is not None else 0)


_CACHE_DTYPES = {None: None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def select_tokens(state: BlockCacheState, x: torch.Tensor, budget: float, cfg: TokenSelectionConfig):
    """Top-``k`` tokens by the Astraea score, ``k = selected_count(N, budget, cfg)``; ``None`` means compute all.
    Returns sorted ``[B, K]``."""
    n = x.shape[1]
    k = selected_count(n, budget, cfg)
    return None if k >= n else top_tokens(state, x, k, cfg)


def top_tokens(state: BlockCacheState, x: torch.Tensor, k: int, cfg: TokenSelectionConfig) -> torch.Tensor:
    """The ``k`` tokens with the highest score ``w_α · LSE_prev · Δ + w_β · exp(n_skip)``, sorted ``[B, k]``."""
    delta = (x - state.last_input).float().norm(dim=-1)  # [B, N]
    significance = state.lse.clamp_min(0) * delta
    if cfg.normalize_significance:
        significance = significance / significance.mean(dim=1, keepdim=True).clamp_min(1e-12)
    score = cfg.w_alpha * significance + cfg.w_beta * torch.exp(state.n_skip.float())
    return score.topk(k, dim=1, sorted=False).indices.sort(dim=1).values


class TokenSelectionBlockHook(ModelHook):
    """Replaces a block's forward with: select tokens, run the block on them, merge with the cached results."""

    _is_stateful = True

    def __init__(self, runtime: AccelRuntime, config: TokenSelectionConfig, block_name: str,
                 counters: tuple[str, ...] = ()):
        super().__init__()
        self.runtime = runtime
        self.config = config
        self.block_name = block_name
        self.counters = counters  # statistics counters of the block's per-token submodules
        self.cache_dtype = _CACHE_DTYPES[config.cache_dtype]
        self.plain = False  # set by prepare_call: a dense call that keeps no caches (the fast path)
        self.timestep = torch.zeros(1, dtype=torch.float64)
        self.state_manager = ContextStateManager(BlockCacheState)
        self.metadata = None
        # set by prepare_call (eager) for the running transformer call
        self.active_state: BlockCacheState | None = None
        self.budget = 1.0
        self.sparse = False
        self.budget_size: torch.Tensor | None = None

    def initialize_hook(self, module):
        self.metadata = TransformerBlockRegistry.get(type(module))
        self.runtime.add_call_preparer(self.prepare_call)
        return module

    def deinitalize_hook(self, module):  # diffusers' spelling: HookRegistry.remove_hook calls `deinitalize_hook`
        self.runtime.remove_call_preparer(self.prepare_call)
        return module

    @torch.compiler.disable
    def prepare_call(self) -> None:
        """Run eagerly by the step tracker before each transformer call: pick this CFG branch's cache (reset on a new
        run or a repeated step), decide whether this call may reuse it, and fix the budget.

        Kept out of :meth:`new_forward` so ``torch.compile`` traces only tensor work: traced, the step numbers and
        context names read here would become guards and recompile the graph on every call.
        """
        rt = self.runtime
        state = self.state_manager.get_state()
        if state.step >= rt.step:  # a new run (the step went back) or the same step again
            state.reset()
        reusable = state.last_input is not None and state.lse is not None
        state.step = rt.step
        self.active_state = state
        self.budget = rt.budget if reusable else 1.0
        self.sparse = self.budget < 1.0  # the traced forward branches on this bool, not on the budget's value
        self.plain = (not self.sparse and self.config.dense_fast_path and rt.plain_attention
                      and not rt.selection_ahead())
        self.timestep = rt.timestep_tensor()  # the forecasts' axis (see AccelRuntime.timestep_tensor)
        self.budget_size = budget_size_hint(self.budget, self.config, self.budget_size)

    def new_forward(self, module, *args, **kwargs):
        rt = self.runtime
        md = self.metadata
        if self.active_state is None:  # called outside a tracked transformer call
            self.prepare_call()
        state = self.active_state
        x = md._get_parameter_from_args_kwargs(md.hidden_states_argument_name, args, kwargs)
        if self.plain:
            return self._dense(x, args, kwargs)
        index = None
        if self.sparse and state.last_input.shape == x.shape:
            selector = rt.extras.get("select_tokens")  # seam: per-shard selection (parallel.py)
            if selector is not None:
                index = selector(state, x, self.budget, self.config)
            else:
                k = self._count(x.shape[1])
                index = None if k >= x.shape[1] else top_tokens(state, x, k, self.config)
        text_len = 0
        if md.encoder_hidden_states_argument_name:
            enc = md._get_parameter_from_args_kwargs(md.encoder_hidden_states_argument_name, args, kwargs)
            text_len = 0 if enc is None else enc.shape[1]
        sel = Selection(num_video=x.shape[1], index=index, text_len=text_len, block_name=self.block_name)
        rt.record_block(x.shape[0], x.shape[1])
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
        if not is_tuple:
            return y
        output = list(output)
        output[md.return_hidden_states_index] = y
        return tuple(output)

    def _dense(self, x: torch.Tensor, args, kwargs):
        """Fast path of a dense call that no later step needs caches from: the block exactly as without
        acceleration (the family's own processors), counted in the statistics."""
        rt = self.runtime
        rows = x.shape[0] * x.shape[1]
        rt.record_block(x.shape[0], x.shape[1])
        for counter in ("attention_queries", "attention_keys", *self.counters):
            rt.count(counter, rows)
        previous, rt.selection = rt.selection, None
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            rt.selection = previous

    def _store(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(self.cache_dtype or t.dtype, copy=True)

    def _count(self, n: int) -> int:
        if self.budget_size is None:
            return selected_count(n, self.budget, self.config)
        # the budget as a number of 1/token_buckets steps, read from a size so compile treats it as dynamic
        return bucket_count(n, self.budget_size.shape[0], self.config)

    def _merge(self, state: BlockCacheState, x: torch.Tensor, y: torch.Tensor, sel: Selection) -> torch.Tensor:
        # Every cache update is out of place (new tensors bound to the state, never written into): under torch.compile
        # two cached tensors may share one buffer (inductor merges equal values, e.g. block i's cached output and
        # block i+1's cached input), and an in-place write into one would corrupt the other.
        mode = self.config.cache
        t = self.timestep
        lse = sel.lse if sel.lse is not None else torch.zeros(x.shape[:2], device=x.device)
        if sel.index is None:
            state.last_input = self._store(x)
            if mode == "forecast":
                if state.forecast is None:
                    state.forecast = TaylorForecast(self.config.forecast_order, self.config.forecast_horizon,
                                                    self.cache_dtype)
                state.forecast.update(y, t)
            else:
                state.cached = self._store(y - x if mode == "residual" else y)
            state.lse = lse.float()
            state.n_skip = torch.zeros(x.shape[:2], device=x.device, dtype=torch.int32)
            return y
        idx = sel.index
        view = idx.unsqueeze(-1).expand(-1, -1, y.shape[-1])
        y_sel = gather_rows(y, idx)
        x_sel = gather_rows(x, idx)
        if mode == "forecast":
            merged = state.forecast.predict(t, dtype=y.dtype)
            state.forecast.update(y_sel, t, idx)
        elif mode == "residual":
            merged = x + state.cached.to(x.dtype)
            state.cached = state.cached.scatter(1, view, (y_sel - x_sel).to(state.cached.dtype))
        else:
            merged = state.cached.to(y.dtype, copy=True)
            state.cached = state.cached.scatter(1, view, y_sel.to(state.cached.dtype))
        merged = merged.scatter(1, view, y_sel)
        state.last_input = state.last_input.scatter(1, view, x_sel.to(state.last_input.dtype))
        state.lse = state.lse.scatter(1, idx, lse.float())
        state.n_skip = (state.n_skip + 1).scatter(1, idx, 0)
        return merged

    def reset_state(self, module):
        self.state_manager.reset()
        self.active_state = None
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
                          config: TokenSelectionConfig):
    """Install the block hooks, row-subset hooks and query-sparse processors on one transformer.

    Returns a zero-argument callable that removes all of it and puts the replaced processors back (a processor set
    by the user since is kept; see :class:`~vdit_accel.runtime.processors.ProcessorSwap`)."""
    swap = ProcessorSwap(transformer, "token-selection (query-sparse attention)")
    blocks = adapter.blocks(transformer)
    for block_name, block in blocks:
        for sub, layout in adapter.token_wise_of(block_name).items():
            HookRegistry.check_if_exists_or_initialize(getattr(block, sub)).register_hook(
                RowSubsetHook(runtime, layout, adapter.counter_of(sub)), ROWS_HOOK)
        counters = tuple(c for c in (adapter.counter_of(sub) for sub in adapter.token_wise_of(block_name)) if c)
        HookRegistry.check_if_exists_or_initialize(block).register_hook(
            TokenSelectionBlockHook(runtime, config, block_name, counters), BLOCK_HOOK)
    for block_name, block in blocks:
        name = f"{block_name}.{adapter.self_attention}"
        swap.install(name, adapter.make_processor(getattr(block, adapter.self_attention).processor, runtime))
    runtime.processor_swaps.append(swap)
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(
        StepForecastHook(runtime, config.forecast_order, lazy=config.dense_fast_path), STEP_FORECAST_HOOK)

    def remove() -> None:
        for block_name, block in blocks:
            for sub in adapter.token_wise_of(block_name):
                registry = getattr(getattr(block, sub), "_diffusers_hook", None)
                if registry is not None and registry.get_hook(ROWS_HOOK) is not None:
                    registry.remove_hook(ROWS_HOOK, recurse=False)
            registry = getattr(block, "_diffusers_hook", None)
            if registry is not None and registry.get_hook(BLOCK_HOOK) is not None:
                registry.remove_hook(BLOCK_HOOK, recurse=False)
        registry = getattr(transformer, "_diffusers_hook", None)
        if registry is not None and registry.get_hook(STEP_FORECAST_HOOK) is not None:
            registry.remove_hook(STEP_FORECAST_HOOK, recurse=False)
        swap.restore()
        if swap in runtime.processor_swaps:
            runtime.processor_swaps.remove(swap)

    return remove


register_method("token_selection", apply_token_selection)
