"""Multi-GPU (or multi-process CPU) sequence parallelism on diffusers' own context parallelism, with token selection.

Start the processes with ``torchrun`` (NCCL on GPUs, gloo on CPU) and shard the video tokens of every transformer of a
pipeline over the ranks::

    # torchrun --nproc-per-node 2 my_script.py
    import vdit_accel
    from vdit_accel import parallel

    rank, world, device = parallel.init_distributed()           # NCCL on CUDA, gloo on CPU; env from torchrun
    pipe = vdit_accel.load_default_pipeline().to(device)
    pipe.enable_acceleration(speedup=2.0)                       # optional; before or after, both work
    parallel.enable_parallelism(pipe, "ulysses")                # or "ring", "ulysses=2,ring=2", a ContextParallelConfig
    video = pipe("a red circle moving right").frames[0]         # the same on every rank; write it on rank 0

or from the command line: ``torchrun --nproc-per-node 2 -m vdit_accel.cli generate --prompt ... --parallel ulysses``.

How it works
------------
* :func:`enable_parallelism` calls diffusers' ``ModelMixin.enable_parallelism(config=ContextParallelConfig(...),
  cp_plan=...)``: diffusers installs the split/gather hooks of the plan and sets ``processor._parallel_config`` on every
  attention processor; attention then runs through ``dispatch_attention_fn(..., parallel_config=...)``, which does the
  Ulysses all-to-all / ring K/V exchange. No communication code of our own: the query-sparse attention of token
  selection runs on diffusers' ``_templated_context_parallel_attention`` too (see :func:`make_cp_attention_fn`).
* Plans: diffusers' own ``_cp_plan`` where the model has one (Wan, LTX, ...); else the adapter's ``cp_plan``
  (CogVideoX, HunyuanVideo, Mochi). Everything per family comes from the adapter (``cp_plan``, ``cp_text``,
  ``cp_processor``); this package names no family.
* Token selection under CP: every rank's blocks see their rank's contiguous shard of the ``(f, h, w)``-ordered video
  tokens (diffusers' ``EquipartitionSharder``), so the block hook scores and keeps ``ceil(θ·N_local)`` tokens of its own
  shard: the same count on every rank (shards are equal, :class:`ContextParallelCheckHook` enforces it), so ranks stay
  balanced and the all-to-all stays uniform. Caches (``BlockCacheState``) are per rank and hold only the local shard.
* Query-sparse attention with CP: ``q`` holds the local selected rows (``[B, k_local (+text_local), H, D]``),
  ``k``/``v`` the whole local shard. diffusers' templates accept a query whose length differs from the key's:
  Ulysses exchanges ``q``, ``k`` and ``v`` separately (``TemplatedUlyssesAttention`` reads ``S_Q_LOCAL`` and
  ``S_KV_LOCAL`` apart, the unified path's ``SeqAllToAllDim`` works per tensor), and ring keeps ``q`` fixed while
  all-gathering K/V and merging partial outputs by their LSE (``TemplatedRingAttention``). The forward op is
  :func:`lse_forward_op`, which returns ``(out, lse)`` through :func:`vdit_accel.kernels.query_sparse_attention`
  (the fused CPU flash kernel on CPU, the kernels' CUDA backends on GPUs), so Ulysses, ring and unified
  (ring × Ulysses) all give exact rows and their LSE.
* Joint attention, text split (adapter ``cp_text="split"``: CogVideoX ``[text, video]``): the text tokens are split
  across ranks as well (as diffusers' Flux plan does). If text stayed whole on every rank and went through the
  templates, every rank would contribute the same text keys and softmax would count each text key ``world`` times.
  The gathered keys are a permutation of the single-process keys (``[t0, v0, t1, v1]``), which softmax attention
  does not see. The text length must then be divisible by the world size (checked before the first block runs).
* Joint attention, text whole on every rank (adapter ``cp_text="whole"``: HunyuanVideo, Mochi, because the padded text's
  valid length differs per sample): :func:`make_cp_attention_fn` sends the video keys through diffusers' templates
  and attends the text keys (identical on every rank) locally once, then merges the two exactly by their LSE. Only
  vdit-accel's attention does that, so these families run under CP with acceleration on (budget 1.0 for a dense
  run); their own processors are refused with a clear error.
* Dense path: the families' own processors dispatch through diffusers (Wan). CogVideoX's processor calls ``F.sdpa``
  directly and would silently attend to the local shard only, so :func:`enable_parallelism` installs its adapter's
  ``cp_processor`` (the same arithmetic, through ``dispatch_attention_fn``).
* Ring needs an LSE-returning backend. diffusers' ``native`` backend cannot return the LSE; when ring is used and the
  self-attention backend is the default, the self-attention processors are switched to ``_native_flash`` (CP-capable,
  CUDA fp16/bf16). Its CPU case (which has no kernel in torch: ``aten::_scaled_dot_product_flash_attention`` is CUDA
  only) is filled in by :func:`install_cpu_lse_backend`: CPU tensors go through :func:`lse_forward_op`
  (``aten._scaled_dot_product_flash_attention_for_cpu``), every other device still runs diffusers' own function.
* CPU torch quirk: diffusers' ``_resolve_parallel_config`` computes ``rank % torch.accelerator.device_count()``, which
  is ``0`` on a CPU-only torch (``ZeroDivisionError``). :func:`setup.cpu_accelerator_count` patches the count to
  ``1`` for the duration of the ``enable_parallelism`` call only and restores it (the mesh is then built on
  ``cpu``/gloo).
* Order does not matter: acceleration may be enabled before or after parallelism (``compare()`` enables and disables
  it between runs). :class:`ContextParallelCheckHook`, the outermost hook of each transformer, keeps diffusers'
  split/gather hooks outermost on their modules (so token selection sees the local shard), points
  ``runtime.attention_fn`` at the context-parallel version, and validates the sizes, before any block runs.
* Failures: :func:`run_guarded` prints a failing rank's error and ends that process at once (``os._exit``), so no
  rank waits in a collective for it: gloo peers see the closed connection and fail too, ``torchrun`` tears the group
  down, and the process group has a timeout (:func:`init_distributed`).

Modules: :mod:`.distributed` (``--parallel`` parsing, ``torchrun`` set-up, :func:`run_guarded`), :mod:`.setup`
(:func:`enable_parallelism`, plans, processors), :mod:`.check` (:class:`ContextParallelCheckHook`), :mod:`.attention`
(the LSE forward op and the query-sparse CP attention), and, in :mod:`vdit_accel.testing`, the single-process per-rank
reference (``emulate_rank_selection``).
The CLI side (``--parallel`` of ``vdit-accel generate``) is :mod:`vdit_accel.commands.parallel`.

What is not supported: ``ulysses_anything`` / ``ring_anything`` (uneven shards), attention-score reuse (TimeRipple
works on the whole token grid) under CP, CogVideoX attention masks, training (no backward op).
"""

from __future__ import annotations

from .attention import install_cpu_lse_backend, lse_forward_op, make_cp_attention_fn
from .check import CHECK_HOOK, ContextParallelCheckHook
from .distributed import PARALLEL_HELP, init_distributed, is_main_process, parse_parallel, run_guarded
from .setup import enable_parallelism, resolve_cp_plan


__all__ = [
    "CHECK_HOOK", "ContextParallelCheckHook", "PARALLEL_HELP", "enable_parallelism",
    "init_distributed", "install_cpu_lse_backend", "is_main_process", "lse_forward_op", "make_cp_attention_fn",
    "parse_parallel", "resolve_cp_plan", "run_guarded",
]
