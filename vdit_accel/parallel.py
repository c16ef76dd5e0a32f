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
* Plans: diffusers' own ``_cp_plan`` where the model has one (Wan, LTX, ...); else the adapter's
  ``extra["cp_plan"]``; else :data:`CP_PLANS` here (CogVideoX).
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
* Joint attention, text split (CogVideoX ``[text, video]``, :data:`COGVIDEOX_CP_PLAN`): the text tokens are split
  across ranks as well (as diffusers' Flux plan does). If text stayed whole on every rank and went through the
  templates, every rank would contribute the same text keys and softmax would count each text key ``world`` times.
  The gathered keys are a permutation of the single-process keys (``[t0, v0, t1, v1]``), which softmax attention
  does not see. The text length must then be divisible by the world size (checked before the first block runs).
* Joint attention, text whole on every rank (HunyuanVideo, Mochi: their adapters' plans, because the padded text's
  valid length differs per sample): :func:`make_cp_attention_fn` sends the video keys through diffusers' templates
  and attends the text keys (identical on every rank) locally once, then merges the two exactly by their LSE. Only
  vdit-accel's attention does that, so these families run under CP with acceleration on (budget 1.0 for a dense
  run); their own processors are refused with a clear error.
* Dense path: the families' own processors dispatch through diffusers (Wan). CogVideoX's processor calls ``F.sdpa``
  directly and would silently attend to the local shard only, so :func:`enable_parallelism` installs
  :class:`CogVideoXContextParallelAttnProcessor` (the same arithmetic, through ``dispatch_attention_fn``).
* Ring needs an LSE-returning backend. diffusers' ``native`` backend cannot return the LSE; when ring is used and the
  self-attention backend is the default, the self-attention processors are switched to ``_native_flash`` (CP-capable,
  CUDA fp16/bf16). Its CPU case (which has no kernel in torch: ``aten::_scaled_dot_product_flash_attention`` is CUDA
  only) is filled in by :func:`install_cpu_lse_backend`: CPU tensors go through :func:`lse_forward_op`
  (``aten._scaled_dot_product_flash_attention_for_cpu``), every other device still runs diffusers' own function.
* CPU torch quirk: diffusers' ``_resolve_parallel_config`` computes ``rank % torch.accelerator.device_count()``, which
  is ``0`` on a CPU-only torch (``ZeroDivisionError``). :func:`_cpu_accelerator_count` patches the count to ``1`` for
  the duration of the ``enable_parallelism`` call only and restores it (the mesh is then built on ``cpu``/gloo).
* Order does not matter: acceleration may be enabled before or after parallelism (``compare()`` enables and disables
  it between runs). :class:`ContextParallelCheckHook`, the outermost hook of each transformer, keeps diffusers'
  split/gather hooks outermost on their modules (so token selection sees the local shard), points
  ``runtime.attention_fn`` at the context-parallel version, and validates the sizes, before any block runs.
* Failures: :func:`run_guarded` prints a failing rank's error and ends that process at once (``os._exit``), so no
  rank waits in a collective for it: gloo peers see the closed connection and fail too, ``torchrun`` tears the group
  down, and the process group has a timeout (:func:`init_distributed`).

What is not supported: ``ulysses_anything`` / ``ring_anything`` (uneven shards), attention-score reuse (TimeRipple
works on the whole token grid) under CP, CogVideoX attention masks, training (no backward op).
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models import attention_dispatch as _ad
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput, ParallelConfig

from .kernels import query_sparse_attention
from .runtime.handle import get_handle, transformers_of
from .runtime.processors import set_processor

CHECK_HOOK = "vdit_accel_cp_check"
_CP_HOOK_PREFIXES = ("cp_input---", "cp_output---")
PARALLEL_HELP = ("context parallelism under torchrun: 'ulysses' or 'ring' (degree = world size), or "
                 "'ulysses=U,ring=R' with U·R = world size")

# --------------------------------------------------------------------------------------------------------------------
# Context-parallel plans for families without a diffusers `_cp_plan`
# --------------------------------------------------------------------------------------------------------------------
#: CogVideoX (1.0 / 1.5, with or without RoPE). The patch embedding concatenates [text, video] and the transformer
#: slices them apart before the blocks, so the split happens at the first block's inputs. ``image_rotary_emb`` ((cos,
#: sin) ``[S_video, D]``, computed by the pipeline) is passed unchanged to every block, so every block splits it
#: (``transformer_blocks.*``). Text is split too (joint attention; see the module docstring). The video output is
#: gathered at ``norm_final``; the text stream after the last block is discarded by the model.
COGVIDEOX_CP_PLAN = {
    "transformer_blocks.0": {
        "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
        "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
    },
    "transformer_blocks.*": {
        "image_rotary_emb": [ContextParallelInput(split_dim=0, expected_dims=2, split_output=False),
                             ContextParallelInput(split_dim=0, expected_dims=2, split_output=False)],
    },
    "norm_final": ContextParallelOutput(gather_dim=1, expected_dims=3),
}

#: plans by transformer class name (used when neither diffusers nor the adapter has one)
CP_PLANS: dict[str, dict] = {"CogVideoXTransformer3DModel": COGVIDEOX_CP_PLAN}
#: families whose plan splits the text tokens (joint attention): the text length must divide by the world size
TEXT_SPLIT_FAMILIES = {"CogVideoXTransformer3DModel"}
#: joint-attention families whose plan (their adapter's) keeps the text whole on every rank: only vdit-accel's
#: attention (video keys through diffusers' CP, text keys once, LSE merge) is right for them; their own processors
#: would count the text keys once per rank (HunyuanVideo dispatches through diffusers) or see the local shard only
#: (Mochi calls F.sdpa)
WHOLE_TEXT_JOINT_FAMILIES = {"HunyuanVideoTransformer3DModel", "MochiTransformer3DModel"}


# --------------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------------
def parse_parallel(spec: str | ContextParallelConfig, world_size: int | None = None) -> ContextParallelConfig:
    """``"ulysses"`` / ``"ring"`` (degree = world size), ``"ulysses=2,ring=2"``, ``"ulysses=2"`` → a
    :class:`diffusers.ContextParallelConfig`. With ``world_size``, the degrees must multiply to it."""
    if isinstance(spec, ContextParallelConfig):
        cfg = spec
        u, r = cfg.ulysses_degree, cfg.ring_degree
    else:
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(f"--parallel must be 'ulysses', 'ring' or 'ulysses=U,ring=R', got {spec!r}.")
        text = spec.strip().lower().replace(" ", "")
        degrees = {"ulysses": 1, "ring": 1}
        if text in degrees:
            if world_size is None:
                raise ValueError(f"--parallel {text!r} takes its degree from the world size; start the processes "
                                 f"with torchrun, or write '{text}=N'.")
            degrees[text] = world_size
        else:
            seen = set()
            for part in text.split(","):
                key, sep, value = part.partition("=")
                if key not in degrees or not sep or not value.isdigit() or int(value) < 1 or key in seen:
                    raise ValueError(f"--parallel: cannot parse {part!r} in {spec!r}; use 'ulysses', 'ring' or "
                                     f"'ulysses=U,ring=R' with positive integers (e.g. 'ulysses=2,ring=2').")
                seen.add(key)
                degrees[key] = int(value)
        u, r = degrees["ulysses"], degrees["ring"]
        if u * r == 1:
            raise ValueError(f"--parallel {spec!r} asks for one rank. Start N processes with "
                             f"`torchrun --nproc-per-node N` and use a degree > 1.")
        cfg = ContextParallelConfig(ulysses_degree=u, ring_degree=r)
    if cfg.ulysses_anything or cfg.ring_anything:
        raise ValueError("ulysses_anything / ring_anything (uneven shards) are not supported by vdit-accel: token "
                         "selection keeps the same count on every rank, which needs equal shards.")
    if world_size is not None and u * r != world_size:
        raise ValueError(f"--parallel {spec!r}: ulysses ({u}) × ring ({r}) = {u * r} must equal the number of "
                         f"processes ({world_size}); e.g. torchrun --nproc-per-node {u * r}.")
    return cfg


def init_distributed(timeout_s: float = 120.0) -> tuple[int, int, torch.device]:
    """Initialise ``torch.distributed`` from the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``): NCCL when CUDA is available, else gloo. Returns ``(rank, world, device)``.

    ``timeout_s`` bounds every collective of the default group, so a rank whose peer died stops waiting.
    Already initialised: returns the current rank, world size and device.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), _local_device()
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"torch.distributed is not initialised and {', '.join(missing)} is not set: start the "
                           f"processes with `torchrun --nproc-per-node N ...`.")
    device = _local_device()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs: dict[str, Any] = dict(backend=backend, timeout=timedelta(seconds=timeout_s))
    if device.type == "cuda":
        kwargs["device_id"] = device
    dist.init_process_group(**kwargs)
    return dist.get_rank(), dist.get_world_size(), device


def _local_device() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
        return torch.device("cuda", local % torch.cuda.device_count())
    return torch.device("cpu")


def is_main_process() -> bool:
    """True on rank 0, or when not distributed."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def run_guarded(fn: Callable[[], Any], exit_code: int = 1) -> Any:
    """Run ``fn`` on this rank; if it raises, print the error with the rank and end this process at once.

    ``os._exit`` skips interpreter teardown, which could otherwise wait in a collective for the peers that this rank
    abandoned. The peers then fail on their next collective (gloo: connection closed by peer; NCCL: ``torchrun``
    tears the group down, or the process-group timeout fires), so no rank hangs.
    """
    try:
        return fn()
    except BaseException as e:  # noqa: BLE001 - SystemExit/KeyboardInterrupt must not leave peers waiting either
        if isinstance(e, SystemExit) and e.code in (0, None):
            raise
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        print(f"[vdit-accel rank {rank}] error: {type(e).__name__}: {e}", file=sys.stderr)
        if not isinstance(e, (ValueError, FileNotFoundError)):
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)


class _CliParallelSetup:
    """What ``vdit-accel generate --parallel`` calls once the pipeline is loaded: enables parallelism, returns whether
    this rank writes the outputs (rank 0). ``info`` goes into the report."""

    def __init__(self, config: ContextParallelConfig, world: int):
        self.config = config
        self.info = dict(ulysses_degree=config.ulysses_degree, ring_degree=config.ring_degree, world_size=world)

    def __call__(self, pipe) -> bool:
        enable_parallelism(pipe, self.config)
        return is_main_process()


def run_cli(args, fn: Callable) -> int:
    """Run a CLI command body ``fn(args, setup)`` on every rank of a ``torchrun`` job: initialise the process group,
    check ``--parallel`` against the world size before anything is loaded, put each rank on its own GPU, and end every
    rank with an error (never a hang) when one fails (:func:`run_guarded`)."""

    def body() -> int:
        _, world, device = init_distributed()
        config = parse_parallel(args.parallel, world)
        if getattr(args, "reuse", False):
            raise ValueError("--reuse (attention-score reuse) works on the whole token grid and is not supported with "
                             "--parallel; drop one of the two.")
        if device.type == "cuda":
            args.device = str(device)
        elif str(args.device).startswith("cuda"):
            raise ValueError(f"--device {args.device} but CUDA is not available; use --device cpu (gloo).")
        code = fn(args, _CliParallelSetup(config, world))
        dist.destroy_process_group()
        return code

    return run_guarded(body, exit_code=2)


@contextlib.contextmanager
def _cpu_accelerator_count():
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


# --------------------------------------------------------------------------------------------------------------------
# Attention: LSE-returning forward op, the query-sparse CP attention, the CPU case of `_native_flash`
# --------------------------------------------------------------------------------------------------------------------
def lse_forward_op(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):
    """A diffusers templated-CP ``forward_op`` (``[B, S, H, D]`` layout) that returns ``(out, lse)``, built on
    :func:`vdit_accel.kernels.query_sparse_attention`. ``query`` may have fewer rows than ``key`` (query-sparse)."""
    if attn_mask is not None or dropout_p or is_causal or enable_gqa:
        raise NotImplementedError("vdit-accel's context-parallel attention supports no mask, dropout, causal "
                                  "attention or GQA.")
    out, lse = query_sparse_attention(query, key, value, scale=scale)
    return (out, lse) if return_lse else out


def _backward_op(ctx, *args, **kwargs):
    raise NotImplementedError("vdit-accel's context-parallel attention is inference-only (no backward).")


def _templated_lse(q, k, v, parallel_config):
    out, lse = _ad._templated_context_parallel_attention(
        q, k, v, None, 0.0, False, None, False, True,
        forward_op=lse_forward_op, backward_op=_backward_op, _parallel_config=parallel_config)
    return out, lse.float()


def make_cp_attention_fn(parallel_config: ParallelConfig, runtime=None, text_keys: str | None = None) -> Callable:
    """``runtime.attention_fn`` for a context-parallel transformer: ``(q, k, v) -> (out, lse)`` where ``q`` holds
    this rank's selected query rows and ``k``/``v`` this rank's whole shard; ``out``/``lse`` are this rank's rows of
    exact attention over *all* ranks' keys (Ulysses, ring or unified, chosen by diffusers from the config).

    ``text_keys`` (``"first"`` / ``"last"``) is for joint-attention families whose plan keeps the text *whole on every
    rank* (HunyuanVideo, Mochi): the keys are then ``[video shard, text]``; the video keys go through diffusers'
    context-parallel attention, the text keys (the same on every rank, so counted once) through a local
    query-sparse attention, and the two partial results are merged exactly by their LSE. The number of text keys is
    ``k.shape[1] - runtime.selection.num_video`` (the block's local video count).
    """

    def cp_query_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        n_text = 0
        if text_keys is not None and runtime is not None and runtime.selection is not None:
            n_text = k.shape[1] - runtime.selection.num_video
        if n_text <= 0:
            out, lse = _templated_lse(q, k, v, parallel_config)
            return out.to(q.dtype), lse
        if text_keys == "last":
            (kv, kt), (vv, vt) = k.split([k.shape[1] - n_text, n_text], 1), v.split([k.shape[1] - n_text, n_text], 1)
        else:
            (kt, kv), (vt, vv) = k.split([n_text, k.shape[1] - n_text], 1), v.split([n_text, k.shape[1] - n_text], 1)
        out_v, lse_v = _templated_lse(q, kv.contiguous(), vv.contiguous(), parallel_config)
        out_t, lse_t = query_sparse_attention(q, kt.contiguous(), vt.contiguous())
        lse = torch.logaddexp(lse_v, lse_t.float())
        out = (out_v.float() * torch.exp(lse_v - lse).unsqueeze(-1)
               + out_t.float() * torch.exp(lse_t.float() - lse).unsqueeze(-1))
        return out.to(q.dtype), lse

    cp_query_sparse_attention._vdit_accel_cp = parallel_config
    return cp_query_sparse_attention


def install_cpu_lse_backend() -> None:
    """Give diffusers' ``_native_flash`` backend a CPU case (idempotent).

    ``_native_flash`` is context-parallel capable but calls ``aten::_scaled_dot_product_flash_attention``, which has no
    CPU kernel, so on CPU it can only raise. The replacement sends CPU tensors through :func:`lse_forward_op` (plain
    SDPA when no parallel config and no LSE is wanted) and every other device to diffusers' own function unchanged.
    """
    registry = _ad._AttentionBackendRegistry
    name = _ad.AttentionBackendName._NATIVE_FLASH
    original = registry._backends[name]
    if getattr(original, "_vdit_accel_cpu", False):
        return

    def native_flash_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                               enable_gqa=False, return_lse=False, _parallel_config=None):
        if query.device.type != "cpu":
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                            scale=scale, enable_gqa=enable_gqa, return_lse=return_lse,
                            _parallel_config=_parallel_config)
        if _parallel_config is None:
            if not return_lse:
                q, k, v = (x.permute(0, 2, 1, 3) for x in (query, key, value))
                out = torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
                return out.permute(0, 2, 1, 3)
            return lse_forward_op(None, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, True)
        return _ad._templated_context_parallel_attention(
            query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, return_lse,
            forward_op=lse_forward_op, backward_op=_backward_op, _parallel_config=_parallel_config)

    native_flash_attention._vdit_accel_cpu = True
    native_flash_attention._vdit_accel_original = original
    registry._backends[name] = native_flash_attention


class CogVideoXContextParallelAttnProcessor:
    """``CogVideoXAttnProcessor2_0`` with its attention through ``dispatch_attention_fn`` (the original calls
    ``F.scaled_dot_product_attention`` directly, which under context parallelism would see the local shard only).
    Same arithmetic; exposes ``_attention_backend`` / ``_parallel_config`` for diffusers."""

    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        if attention_mask is not None:
            raise NotImplementedError("CogVideoX attention masks are not supported under context parallelism.")
        text_seq_length = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch_size = hidden_states.shape[0]
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
                             for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query[:, :, text_seq_length:] = apply_rotary_emb(query[:, :, text_seq_length:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_seq_length:] = apply_rotary_emb(key[:, :, text_seq_length:], image_rotary_emb)
        hidden_states = _ad.dispatch_attention_fn(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
            backend=self._attention_backend, parallel_config=self._parallel_config)
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_seq_length, hidden_states.size(1) - text_seq_length], dim=1)
        return hidden_states, encoder_hidden_states


#: family -> processor class that dispatches (installed on the self-attention modules before enable_parallelism)
DISPATCHING_PROCESSORS = {"CogVideoXTransformer3DModel": CogVideoXContextParallelAttnProcessor}


# --------------------------------------------------------------------------------------------------------------------
# Plans and set-up
# --------------------------------------------------------------------------------------------------------------------
def _adapter_of(transformer):
    from .adapters import get_adapter

    try:
        return get_adapter(transformer)
    except ValueError:
        return None


def resolve_cp_plan(transformer: torch.nn.Module, cp_plan: dict | None = None) -> dict:
    """The context-parallel plan for ``transformer``: ``cp_plan`` if given, else diffusers' ``_cp_plan``, else the
    adapter's ``extra["cp_plan"]``, else :data:`CP_PLANS`. Raises naming the class when there is none."""
    if cp_plan is not None:
        return cp_plan
    plan = getattr(transformer, "_cp_plan", None)
    if plan:
        return plan
    adapter = _adapter_of(transformer)
    if adapter is not None and adapter.extra.get("cp_plan"):
        return adapter.extra["cp_plan"]
    plan = CP_PLANS.get(type(transformer).__name__)
    if plan is None:
        raise ValueError(f"No context-parallel plan for {type(transformer).__name__}: diffusers has no `_cp_plan` for "
                         f"it and vdit-accel ships none. Pass `cp_plan=` (see diffusers' ContextParallelInput/"
                         f"ContextParallelOutput) or add `extra={{'cp_plan': ...}}` to its adapter.")
    return plan


def _attention_modules(transformer):
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_processor import Attention, MochiAttention

    return [(n, m) for n, m in transformer.named_modules() if isinstance(m, (Attention, MochiAttention,
                                                                             AttentionModuleMixin))]


def _self_attention_modules(transformer):
    adapter = _adapter_of(transformer)
    if adapter is None:
        return []
    return [(f"{name}.{adapter.self_attention}", getattr(block, adapter.self_attention))
            for name, block in adapter.blocks(transformer)]


def _heads(transformer) -> int | None:
    return getattr(transformer.config, "num_attention_heads", None)


def _install_dispatching_processors(transformer) -> None:
    """Families whose processor calls F.sdpa directly get a dispatching one (also inside acceleration wrappers and in
    the acceleration handle's saved originals, so ``disable_acceleration`` restores the dispatching processor)."""
    from .adapters import QuerySparseProcessorBase

    cls = DISPATCHING_PROCESSORS.get(type(transformer).__name__)
    if cls is None:
        return
    handle = get_handle(transformer)
    for name, module in _self_attention_modules(transformer):
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
        cp_plan: a diffusers context-parallel plan overriding the model's own / the adapter's / ours.

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
        heads = _heads(tr)
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
        _install_dispatching_processors(tr)
        if cfg.ring_degree > 1:
            _use_lse_backend(tr)
        with _cpu_accelerator_count():
            tr.enable_parallelism(config=tr_cfg, cp_plan=plans[name])
        mesh = tr._parallel_config.context_parallel_config._mesh
        hook = ContextParallelCheckHook(plans[name], text_split=type(tr).__name__ in TEXT_SPLIT_FAMILIES,
                                        text_keys=_text_key_position(tr))
        HookRegistry.check_if_exists_or_initialize(tr).register_hook(hook, CHECK_HOOK)
        hook.sync(tr, check_processors=False)  # processors are checked at the first call (acceleration may follow)
    # Every rank leaves together. The device mesh's subgroups are built through the store that rank 0 hosts; a rank
    # that then fails fast (a bad input is caught at the first transformer call) and exits would otherwise take the
    # store down while a slower peer is still building them, and that peer would die of a broken pipe instead of
    # reporting the real error (seen in tests/test_parallel.py under load).
    dist.barrier()
    return pipe_or_transformer


def _text_key_position(transformer) -> str:
    """``"first"`` for ``[text, video]`` joint layouts (CogVideoX), else ``"last"`` (HunyuanVideo, Mochi)."""
    adapter = _adapter_of(transformer)
    if adapter is None:
        return "last"
    layouts = list(adapter.token_wise.values())
    for d in getattr(adapter, "token_wise_by_list", {}).values():
        layouts += list(d.values())
    return "first" if "text_video" in layouts else "last"


def _use_lse_backend(transformer) -> None:
    """Ring needs a backend that returns the LSE; diffusers' default ``native`` does not. Switch the processors that
    use the default backend to ``_native_flash`` (CUDA fp16/bf16; CPU through :func:`install_cpu_lse_backend`)."""
    install_cpu_lse_backend()
    active, _ = _ad._AttentionBackendRegistry.get_active_backend()
    modules = _self_attention_modules(transformer) or _attention_modules(transformer)
    for _, module in modules:
        proc = module.processor
        if proc is None or not hasattr(proc, "_attention_backend"):
            continue
        backend = proc._attention_backend or active
        if _ad.AttentionBackendName(backend) == _ad.AttentionBackendName.NATIVE:
            proc._attention_backend = _ad.AttentionBackendName._NATIVE_FLASH.value


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
        adapter = _adapter_of(module)
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
        _ensure_cp_hooks_outermost(module, self.plan)
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
            _check_processors(module, accelerated=handle is not None)
            self._synced_handle, self._checked = handle, True


def _check_processors(transformer, accelerated: bool) -> None:
    """Every self-attention processor must have received the parallel config, or attention would silently see the
    local shard only. An acceleration wrapper attends through ``runtime.attention_fn`` in every accelerated block, so
    there the wrapper is checked; without acceleration the family's own processor runs and is checked."""
    from .adapters import QuerySparseProcessorBase

    for name, module in _self_attention_modules(transformer):
        proc = module.processor
        if isinstance(proc, QuerySparseProcessorBase):
            if not accelerated:
                proc = proc.inner
            elif proc._parallel_config is None:
                # acceleration enabled after parallelism around a processor diffusers skipped (no attribute): the
                # wrapper attends through runtime.attention_fn; mark the wrapper only, never the family's processor
                object.__setattr__(proc, "_parallel_config", transformer._parallel_config)
        own_processor_wrong = not accelerated and type(transformer).__name__ in WHOLE_TEXT_JOINT_FAMILIES
        if own_processor_wrong or getattr(proc, "_parallel_config", None) is None:
            raise RuntimeError(
                f"{name}: processor {type(proc).__name__} cannot run {type(transformer).__name__} under context "
                f"parallelism: it has no `_parallel_config` (it calls F.scaled_dot_product_attention directly) and "
                f"would attend to the local shard only, or, for joint attention with the text whole on every rank, "
                f"would count the text keys once per rank. Enable acceleration (token selection; "
                f"budget 1.0 for a dense run) so attention goes through vdit-accel's context-parallel attention, or "
                f"use a processor that dispatches through diffusers.")


def _ensure_cp_hooks_outermost(transformer, plan: dict) -> None:
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
            is_cp = [n.startswith(_CP_HOOK_PREFIXES) for n in order]
            if True not in is_cp:
                continue
            first_cp = is_cp.index(True)
            if all(is_cp[first_cp:]):
                continue
            tail = order[first_cp:]
            hooks = {n: reg.hooks[n] for n in tail}
            for n in reversed(tail):
                reg.remove_hook(n, recurse=False)
            for n in [n for n in tail if not n.startswith(_CP_HOOK_PREFIXES)]:
                reg.register_hook(hooks[n], n)
            for n in [n for n in tail if n.startswith(_CP_HOOK_PREFIXES)]:
                reg.register_hook(hooks[n], n)
    root = getattr(transformer, "_diffusers_hook", None)
    if root is not None:
        root.invalidate_child_registries_cache()


# --------------------------------------------------------------------------------------------------------------------
# Single-process emulation of per-rank selection (the reference that parallel runs are compared with)
# --------------------------------------------------------------------------------------------------------------------
class _ShardState:
    """A view of a ``BlockCacheState`` restricted to one contiguous shard of the video tokens."""

    def __init__(self, state, sl: slice):
        self.last_input = state.last_input[:, sl]
        self.lse = state.lse[:, sl]
        self.n_skip = state.n_skip[:, sl]


def sharded_selector(shards: int) -> Callable:
    """A token selector that selects within each of ``shards`` contiguous shards of the video tokens with the same
    count ``ceil(θ·N/shards)``: what each rank of a ``shards``-way context-parallel run selects, in one process."""
    from .methods.token_selection import select_tokens

    def select(state, x, budget, cfg):
        n = x.shape[1]
        if n % shards:
            raise ValueError(f"{n} video tokens cannot be split into {shards} equal shards.")
        local = n // shards
        parts = []
        for s in range(shards):
            sl = slice(s * local, (s + 1) * local)
            idx = select_tokens(_ShardState(state, sl), x[:, sl], budget, cfg)
            if idx is None:
                idx = torch.arange(local, device=x.device).expand(x.shape[0], -1)
            parts.append(idx + s * local)
        index = torch.cat(parts, dim=1)
        return None if index.shape[1] == n else index

    select._vdit_accel_shards = shards
    return select


def emulate_rank_selection(pipe_or_transformer, shards: int) -> None:
    """Make an accelerated single-process pipeline select tokens per shard as a ``shards``-rank context-parallel run
    does (the same per-rank budgets), so the two outputs can be compared. ``shards=1`` restores the global top-k."""
    modules = ([pipe_or_transformer] if isinstance(pipe_or_transformer, torch.nn.Module)
               else [m for _, m in transformers_of(pipe_or_transformer)])
    for m in modules:
        handle = get_handle(m)
        if handle is None:
            raise ValueError("Acceleration is not enabled; call `enable_acceleration` first.")
        if shards == 1:
            handle.runtime.extras.pop("select_tokens", None)
        else:
            handle.runtime.extras["select_tokens"] = sharded_selector(shards)


__all__ = [
    "COGVIDEOX_CP_PLAN", "CP_PLANS", "CogVideoXContextParallelAttnProcessor", "ContextParallelCheckHook",
    "emulate_rank_selection", "enable_parallelism", "init_distributed", "install_cpu_lse_backend", "is_main_process",
    "lse_forward_op", "make_cp_attention_fn", "parse_parallel", "resolve_cp_plan", "run_cli", "run_guarded",
    "sharded_selector",
]
