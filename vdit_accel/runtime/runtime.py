"""Shared per-transformer runtime: which step and CFG branch is running, the active token selection, statistics.

One :class:`AccelRuntime` is attached to an accelerated transformer. The step tracker hook (on the transformer)
fills in the step; block hooks set :attr:`AccelRuntime.selection` around each block's forward; processors and
row-subset hooks inside the block read it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..kernels import gather_rows, query_sparse_attention


@dataclass
class Selection:
    """The tokens a block recomputes in the current call.

    ``index`` is ``[B, K]`` (sorted, long) into the block's video tokens, or ``None`` when every token is computed.
    ``lse`` receives the per-token log-sum-exp (mean over heads, ``[B, K]``) from the self-attention processor.
    """

    num_video: int
    index: torch.Tensor | None = None
    text_len: int = 0
    lse: torch.Tensor | None = None
    block_name: str = ""

    @property
    def num_selected(self) -> int:
        return self.num_video if self.index is None else self.index.shape[1]

    def rows(self, layout: str, seq_len: int) -> torch.Tensor | None:
        """Row indices ``[B, R]`` into a tensor laid out as ``layout`` (``"video"``, ``"text_video"``,
        ``"video_text"``), or ``None`` when every row is computed."""
        if self.index is None:
            return None
        text = seq_len - self.num_video
        if layout == "video":
            return self.index
        b = self.index.shape[0]
        if layout == "text_video":
            text_rows = torch.arange(text, device=self.index.device).expand(b, -1)
            return torch.cat([text_rows, self.index + text], dim=1)
        if layout == "video_text":
            text_rows = torch.arange(self.num_video, seq_len, device=self.index.device).expand(b, -1)
            return torch.cat([self.index, text_rows], dim=1)
        raise ValueError(f"unknown token layout {layout!r}")

    def gather(self, x: torch.Tensor, layout: str = "video") -> torch.Tensor:
        rows = self.rows(layout, x.shape[1])
        return x if rows is None else gather_rows(x, rows)

    def scatter(self, y: torch.Tensor, seq_len: int, layout: str = "video") -> torch.Tensor:
        """Place computed rows ``y`` ``[B, R, C]`` into a zero tensor ``[B, seq_len, C]``; unselected rows are 0
        (they are replaced by cached results at the end of the block)."""
        rows = self.rows(layout, seq_len)
        if rows is None:
            return y
        full = y.new_zeros(y.shape[0], seq_len, *y.shape[2:])
        view = rows.view(*rows.shape, *([1] * (y.dim() - 2))).expand(-1, -1, *y.shape[2:])
        return full.scatter_(1, view, y)


@dataclass
class StepRecord:
    """Token counts of one transformer call (one step of one CFG branch), summed over blocks."""

    step: int
    context: str
    budget: float
    batch: int
    video_tokens: int = 0  # per block, per sample
    blocks: int = 0
    attention_queries: int = 0  # video query rows through self-attention, all blocks, all samples
    cross_attention_tokens: int = 0
    ffn_tokens: int = 0
    attention_keys: int = 0  # video key rows seen by self-attention (always all tokens)
    skipped: bool = False  # a budget-0 step: no block ran, the output is a forecast

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class AccelRuntime:
    """State shared by the hooks and processors of one accelerated transformer."""

    budgets: list[float] | None = None
    step: int = 0
    num_steps: int = 0
    timestep: float = 0.0  # the transformer's timestep argument this call (the axis of the forecasts)
    timesteps: Any = None  # the running scheduler's timesteps (a tensor), when a pipeline drives the steps
    auto: Any = None  # schedule="auto": the run-time skip decider (vdit_accel.methods.step_forecast.AutoDecider)
    context: str = "default"
    selection: Selection | None = None
    records: list[StepRecord] = field(default_factory=list)
    step_resolver: Callable[[Any], tuple[int, int]] | None = None
    # per-run data for visualisation: step -> context -> block -> index (only when record_masks is on)
    record_masks: bool = False
    masks: dict = field(default_factory=lambda: defaultdict(dict))
    grid: tuple[int, int, int] | None = None
    # seams used by the self-attention processors (see adapters/base.py::QuerySparseProcessorBase.attend)
    qk_transforms: list[Callable] = field(default_factory=list)
    attention_fn: Callable = query_sparse_attention
    extras: dict[str, Any] = field(default_factory=dict)
    # processors installed by the methods (runtime/processors.py); the step tracker checks them at every call
    processor_swaps: list = field(default_factory=list)
    # Counts of the running transformer call (see count / flush_counts) and the per-call preparations the step
    # tracker runs eagerly before the call (the block hooks register theirs; see TokenSelectionBlockHook.prepare_call).
    pending: dict[str, Any] = field(default_factory=dict)
    call_preparers: list[Callable[[], None]] = field(default_factory=list)
    _timestep_tensor: torch.Tensor | None = None  # see timestep_tensor

    def timestep_tensor(self) -> torch.Tensor:
        """This call's timestep as a one-element float64 tensor, made once per call and shared by the block hooks
        (traced, a Python float would be a guard recompiling every step, and a 0-dim CPU tensor is read as a scalar,
        which makes dynamo restart every first trace)."""
        t = self._timestep_tensor
        if t is None or float(t[0]) != self.timestep:
            t = self._timestep_tensor = torch.tensor([self.timestep], dtype=torch.float64)
        return t

    @property
    def budget(self) -> float:
        if self.budgets is None:
            return 1.0
        return self.budgets[min(self.step, len(self.budgets) - 1)]

    def add_call_preparer(self, fn: Callable[[], None], first: bool = False) -> None:
        """Register ``fn`` to run (eagerly) before every transformer call, once; ``first`` puts it before the others."""
        if fn not in self.call_preparers:  # hooks are re-registered when parallelism reorders them
            self.call_preparers.insert(0, fn) if first else self.call_preparers.append(fn)

    def remove_call_preparer(self, fn: Callable[[], None]) -> None:
        if fn in self.call_preparers:
            self.call_preparers.remove(fn)

    def skip_ahead(self) -> bool:
        """Whether a later step of this run is skipped (budget 0): only then must a computed step's output be kept
        for the forecast."""
        return self.budgets is not None and any(b <= 0.0 for b in self.budgets[self.step + 1:])

    def selection_ahead(self) -> bool:
        """Whether a later step of this run recomputes a fraction of the tokens (0 < budget < 1). Only then must a
        dense step keep the per-block caches; a run of dense and skipped steps needs none of them."""
        if self.budgets is None:
            return False
        return any(0.0 < b < 1.0 for b in self.budgets[self.step + 1:])

    @property
    def plain_attention(self) -> bool:
        """No other method hooks into the query-sparse attention (score reuse, context parallelism, custom
        selection), so a dense step may run the family's own processors."""
        return (not self.qk_transforms and self.attention_fn is query_sparse_attention
                and "select_tokens" not in self.extras)

    @property
    def current(self) -> StepRecord | None:
        return self.records[-1] if self.records else None

    def count(self, kind: str, n: int) -> None:
        """Add ``n`` to the counter ``kind`` of the running call's :class:`StepRecord`.

        The sum goes to :attr:`pending`, a fresh dict per transformer call, and reaches the record at
        :meth:`flush_counts` (eager, at the end of the call). Under ``torch.compile`` this is then a side effect on a
        new dict: no guard on a running total or on ``len(records)``, which would recompile on every call. ``n`` is not
        passed through ``int()``: under compile it may be a symbolic size, and ``int()`` would specialise on it.
        """
        self.pending[kind] = self.pending.get(kind, 0) + n

    def record_block(self, batch: int, video_tokens: int) -> None:
        """One block ran on ``batch`` samples of ``video_tokens`` video tokens (see :meth:`count`)."""
        self.pending["blocks"] = self.pending.get("blocks", 0) + 1
        self.pending["batch"], self.pending["video_tokens"] = batch, video_tokens

    def flush_counts(self) -> None:
        """Add the pending counts to the current record (called by the step tracker around each call)."""
        pending, self.pending = self.pending, {}
        rec = self.current
        if rec is None:
            return
        for kind, n in pending.items():
            if kind in ("batch", "video_tokens"):
                setattr(rec, kind, int(n))
            else:
                setattr(rec, kind, getattr(rec, kind) + int(n))

    def reset_records(self) -> None:
        """Start the statistics of a new pipeline call: records describe the last call only."""
        self.pending = {}
        self.records.clear()
        self.masks = defaultdict(dict)

    def summary(self) -> dict[str, Any]:
        """Per-step token counts, summed over CFG branches: what ran, not what was skipped."""
        self.flush_counts()
        steps: dict[int, dict[str, Any]] = {}
        dense_of: dict[str, int] = {}  # per CFG branch: the tokens a dense call runs (a skipped call records none)
        for r in self.records:
            s = steps.setdefault(r.step, dict(step=r.step, budget=r.budget, calls=0, skipped=0, attention_queries=0,
                                              cross_attention_tokens=0, ffn_tokens=0, dense_tokens=0))
            s["calls"] += 1
            s["skipped"] += int(r.skipped)
            for k in ("attention_queries", "cross_attention_tokens", "ffn_tokens"):
                s[k] += getattr(r, k)
            if not r.skipped:
                dense_of[r.context] = r.video_tokens * r.blocks * r.batch
            s["dense_tokens"] += dense_of.get(r.context, 0)
        out = [steps[k] for k in sorted(steps)]
        total = sum(s["dense_tokens"] for s in out) or 1
        computed = sum(s["ffn_tokens"] for s in out)
        return dict(steps=out, computed_token_fraction=computed / total)
