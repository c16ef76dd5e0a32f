"""Query-sparse attention kernels against their references, plus backend dispatch.

The Triton kernel runs under the interpreter (``TRITON_INTERPRET=1``, set before the kernel module is first
imported) on small, deliberately awkward shapes; the GPU compile is checked separately (compiled for sm_90 without a
GPU, in a subprocess without the interpreter).
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any import of vdit_accel.kernels.*.triton

import logging  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import vdit_accel.kernels as K  # noqa: E402
from vdit_accel.kernels import dispatch  # noqa: E402
from vdit_accel.kernels.query_sparse import naive_query_sparse_attention, sdpa_query_sparse_attention  # noqa: E402

HAS_TRITON = dispatch.package_available("triton")
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install vdit-accel[triton])")
needs_interpreter = pytest.mark.skipif(not dispatch.triton_interpret(),
                                       reason="TRITON_INTERPRET was set to something other than 1 by the caller")

# Relative RMS error allowed against the fp32 reference: fp16/bf16 round P to the input dtype before P·V.
RATIO = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
LSE_ATOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def assert_close(name: str, ref: torch.Tensor, got: torch.Tensor, ratio: float) -> None:
    ref, got = ref.float(), got.float()
    assert not torch.isnan(got).any(), f"{name}: NaN in output"
    diff = (ref - got).abs().max().item()
    err = ((ref - got).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-12)).item()
    assert err <= ratio, f"{name}: RMS error ratio {err:.2e} > {ratio:.0e} (max abs diff {diff:.2e})"


def dense_rows(q, k, v, idx, scale=None):
    """Rows ``idx`` of dense SDPA and their LSE, the independent oracle."""
    qh, kh, vh = (t.transpose(1, 2).float() for t in (q, k, v))
    out = F.scaled_dot_product_attention(qh, kh, vh, scale=scale).transpose(1, 2)
    s = (q.shape[-1] ** -0.5) if scale is None else scale
    lse = torch.logsumexp(qh @ kh.transpose(-1, -2) * s, dim=-1).transpose(1, 2)
    return K.gather_rows(out, idx), K.gather_rows(lse, idx)


def make(B, Sq, Skv, H, D, K_sel, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Sq, H, D, generator=g).to(dtype)
    k = torch.randn(B, Skv, H, D, generator=g).to(dtype)
    v = torch.randn(B, Skv, H, D, generator=g).to(dtype)
    idx = torch.stack([torch.randperm(Sq, generator=g)[:K_sel] for _ in range(B)])
    return q, k, v, idx


SHAPES = [  # (B, Sq, Skv, H, D, K): ragged K, K=1, K=S, D below/above one tile, D not a power of 2, Skv != Sq
    pytest.param(1, 63, 63, 1, 16, 1, id="B1-S63-H1-D16-K1"),
    pytest.param(2, 63, 63, 3, 32, 17, id="B2-S63-H3-D32-K17"),
    pytest.param(1, 80, 80, 2, 64, 80, id="B1-S80-H2-D64-Kall"),
    pytest.param(2, 111, 111, 1, 60, 50, id="B2-S111-H1-D60-K50"),
    pytest.param(1, 40, 77, 2, 32, 9, id="B1-Sq40-Skv77-H2-D32-K9"),
]


# ----------------------------------------------------------------------------------------------- references


@pytest.mark.parametrize("B,Sq,Skv,H,D,K_sel", SHAPES)
def test_references_match_dense_rows(B, Sq, Skv, H, D, K_sel):
    q, k, v, idx = make(B, Sq, Skv, H, D, K_sel)
    ref_out, ref_lse = dense_rows(q, k, v, idx)
    for fn in (naive_query_sparse_attention, sdpa_query_sparse_attention):
        out, lse = fn(q, k, v, idx)
        assert out.shape == (B, K_sel, H, D) and lse.shape == (B, K_sel, H) and lse.dtype == torch.float32
        assert_close(f"{fn.__name__} out", ref_out, out, 1e-5)
        torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=0)


# -------------------------------------------------------------------------------------------- triton kernel


def _check_against_refs(q, k, v, idx, scale=None, **kw):
    dtype = q.dtype
    out, lse = K.query_sparse_attention(q, k, v, idx, scale, backend="triton", **kw)
    ref_out, ref_lse = naive_query_sparse_attention(q, k, v, idx, scale)
    assert out.dtype == q.dtype and lse.dtype == torch.float32
    tag = f"shape={tuple(q.shape)} K={ref_out.shape[1]} dtype={dtype}"
    assert_close(f"out vs naive {tag}", ref_out, out, RATIO[dtype])
    torch.testing.assert_close(lse, ref_lse, atol=LSE_ATOL[dtype], rtol=0, msg=lambda m: f"lse {tag}: {m}")
    dense_out, dense_lse = dense_rows(q.float(), k.float(), v.float(), idx, scale)
    assert_close(f"out vs dense SDPA rows {tag}", dense_out, out, RATIO[dtype])
    torch.testing.assert_close(lse, dense_lse, atol=LSE_ATOL[dtype], rtol=0)
    return out, lse


@needs_triton
@needs_interpreter
@pytest.mark.parametrize("B,Sq,Skv,H,D,K_sel", SHAPES)
def test_triton_fp32(B, Sq, Skv, H, D, K_sel):
    q, k, v, idx = make(B, Sq, Skv, H, D, K_sel)
    _check_against_refs(q, k, v, idx)


@needs_triton
@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("B,Sq,Skv,H,D,K_sel", [SHAPES[1], SHAPES[3]])
def test_triton_half(B, Sq, Skv, H, D, K_sel, dtype):
    # bf16: the interpreter multiplies bf16 as raw integers, so interpreted bf16 runs feed tl.dot the (exactly
    # upcast) fp32 values; loads, P's rounding to bf16 and stores are still bf16.
    q, k, v, idx = make(B, Sq, Skv, H, D, K_sel, dtype)
    _check_against_refs(q, k, v, idx)


@needs_triton
@needs_interpreter
def test_triton_pre_gathered_int32_index_and_scale():
    q, k, v, idx = make(2, 63, 63, 2, 32, 20, seed=1)
    out_idx, lse_idx = _check_against_refs(q, k, v, idx.int(), scale=0.3)
    out_pre, lse_pre = K.query_sparse_attention(K.gather_rows(q, idx), k, v, None, 0.3, backend="triton")
    torch.testing.assert_close(out_pre, out_idx)
    torch.testing.assert_close(lse_pre, lse_idx)


@needs_triton
@needs_interpreter
def test_triton_strided_inputs():
    # [B, H, S, D] storage seen as [B, S, H, D] (non-contiguous), and a 1-D index shared by the batch.
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, 50, 32, generator=g).transpose(1, 2) for _ in range(3))
    idx = torch.tensor([49, 0, 7, 7, 31])  # duplicates are allowed
    assert not q.is_contiguous()
    _check_against_refs(q, k, v, idx.expand(2, -1))
    out, _ = K.query_sparse_attention(q, k, v, idx, backend="triton")
    assert out.shape == (2, 5, 3, 32)


@needs_triton
@needs_interpreter
@pytest.mark.parametrize("backend", ["triton", "sdpa", "naive"])
def test_out_full_scatters_rows(backend):
    q, k, v, idx = make(2, 63, 63, 3, 32, 17, seed=3)
    full = torch.full_like(q, 7.0)
    out, lse = K.query_sparse_attention(q, k, v, idx, backend=backend, out_full=full)
    assert out is full
    ref_out, ref_lse = naive_query_sparse_attention(q, k, v, idx)
    assert_close("scattered rows", ref_out, K.gather_rows(full, idx), 1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=0)
    untouched = torch.ones(2, 63, dtype=torch.bool).scatter_(1, idx, False)
    assert (full[untouched] == 7.0).all()


@needs_triton
@needs_interpreter
def test_triton_empty_selection():
    q, k, v, _ = make(1, 20, 20, 2, 16, 1)
    out, lse = K.query_sparse_attention(q, k, v, torch.zeros(1, 0, dtype=torch.long), backend="triton")
    assert out.shape == (1, 0, 2, 16) and lse.shape == (1, 0, 2)


# ------------------------------------------------------------------------------------------------- dispatch


def test_cpu_auto_uses_reference_path():
    q, k, v, idx = make(2, 63, 63, 3, 32, 17)
    out, lse = K.query_sparse_attention(q, k, v, idx)
    ref_out, ref_lse = naive_query_sparse_attention(q, k, v, idx)
    assert_close("auto cpu", ref_out, out, 1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=0)
    assert dispatch.resolve("op", None, K._QUERY_SPARSE_BACKENDS, K._auto_order(q.device, ["triton", "xformers"]),
                            q, k, v) == "sdpa"


def test_auto_order_prefers_kernels_on_cuda():
    assert K._auto_order(torch.device("cuda"), ["triton", "xformers"]) == ["triton", "xformers", "sdpa"]
    assert K._auto_order(torch.device("cuda"), ["triton"], torch.float32) == ["sdpa"]
    assert K._auto_order(torch.device("cpu"), ["triton", "xformers"]) == ["sdpa"]
    assert K._auto_order(torch.device("meta"), ["triton"]) == ["naive"]


def test_explicit_unavailable_backend_names_the_requirement(monkeypatch):
    q, k, v, idx = make(1, 10, 10, 2, 16, 3)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(K.BackendUnavailableError,
                       match=r"backend='triton' needs a CUDA device and the `triton` package"):
        K.query_sparse_attention(q, k, v, idx, backend="triton")
    with pytest.raises(K.BackendUnavailableError, match=r"backend='xformers' needs a CUDA device"):
        K.query_sparse_attention(q, k, v, idx, backend="xformers")
    with pytest.raises(ValueError, match=r"unknown backend='flash'.*\['naive', 'sdpa', 'triton', 'xformers'\]"):
        K.query_sparse_attention(q, k, v, idx, backend="flash")


@needs_triton
@needs_interpreter
def test_triton_is_forward_only():
    q, k, v, idx = make(1, 20, 20, 2, 16, 3)
    q.requires_grad_(True)
    with pytest.raises(K.BackendUnavailableError, match="forward-only and the inputs require grad"):
        K.query_sparse_attention(q, k, v, idx, backend="triton")
    out, _ = K.query_sparse_attention(q, k, v, idx)  # automatic: a differentiable path
    out.sum().backward()
    assert q.grad is not None
    with torch.no_grad():
        K.query_sparse_attention(q, k, v, idx, backend="triton")


@needs_triton
def test_triton_bf16_needs_sm80(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    fake = types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.bfloat16)
    assert dispatch.check_triton(fake) == (False, "needs a GPU with bf16 tensor cores (SM >= 80) for bf16 inputs; "
                                                  "got SM75")
    fake.dtype = torch.float16
    assert dispatch.check_triton(fake) == (True, "")


def test_automatic_fallback_is_logged_once(caplog):
    registry = {"fast": lambda *_: (False, "needs a unicorn"), "slow": dispatch.check_always}
    t = torch.empty(1, device="meta")
    with caplog.at_level(logging.INFO, logger="vdit_accel.kernels.dispatch"):
        for _ in range(3):
            assert dispatch.resolve("op_x", None, registry, ["fast", "slow"], t) == "slow"
    msgs = [r.getMessage() for r in caplog.records if "op_x" in r.getMessage()]
    assert msgs == ["op_x: using backend 'slow' because 'fast' needs a unicorn"]


def test_bad_inputs_raise_clear_errors():
    q, k, v, idx = make(2, 10, 10, 2, 16, 3)
    with pytest.raises(IndexError, match=r"q_index must lie in \[0, 10\)"):
        K.query_sparse_attention(q, k, v, idx + 10)
    with pytest.raises(TypeError, match="int32 or int64"):
        K.query_sparse_attention(q, k, v, idx.float())
    with pytest.raises(ValueError, match="out_full needs q_index"):
        K.query_sparse_attention(q, k, v, out_full=torch.empty_like(q))
    with pytest.raises(ValueError, match="shapes do not match"):
        K.query_sparse_attention(q, k[:, :, :1], v, idx)
    with pytest.raises(ValueError, match="share dtype"):
        K.query_sparse_attention(q, k.half(), v, idx)


def test_xformers_wrapper_handles_padded_lse(monkeypatch):
    """The xformers path, against a stand-in module that pads the LSE's query axis like the cutlass operator."""
    calls = {}

    def memory_efficient_attention_partial(q, k, v, attn_bias=None, p=0.0, scale=None, *, op=None, output_dtype=None):
        calls["q_shape"] = tuple(q.shape)
        out, lse = naive_query_sparse_attention(q, k, v, None, scale)  # [B, M, H, D], [B, M, H]
        lse = lse.transpose(1, 2)  # xformers: [B, H, M]
        pad = (-lse.shape[-1]) % 32
        return out.to(output_dtype or torch.float32), F.pad(lse, (0, pad), value=float("nan"))

    fmha = types.SimpleNamespace(memory_efficient_attention_partial=memory_efficient_attention_partial)
    ops = types.ModuleType("xformers.ops")
    ops.fmha = fmha
    monkeypatch.setitem(sys.modules, "xformers", types.ModuleType("xformers"))
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    from vdit_accel.kernels.query_sparse.xformers_partial import xformers_query_sparse_attention

    q, k, v, idx = make(2, 63, 63, 3, 32, 17)
    out, lse = xformers_query_sparse_attention(q, k, v, idx, 0.2)
    ref_out, ref_lse = naive_query_sparse_attention(q, k, v, idx, 0.2)
    assert calls["q_shape"] == (2, 17, 3, 32)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(lse, ref_lse)


def test_doctests():
    import doctest

    res = doctest.testmod(K, verbose=False)
    assert res.failed == 0 and res.attempted >= 2


def test_kernel_bench_cpu_smoke(tmp_path):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "kernel_bench.py")
    spec = importlib.util.spec_from_file_location("kernel_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--cpu-smoke", "--out", str(tmp_path), "--repeats", "1"]) == 0
    md = (tmp_path / "kernels_cpu-smoke.md").read_text()
    assert "CPU smoke test (reference path, not a GPU measurement)" in md and "| 0.4 |" in md


# -------------------------------------------------------------------------------- GPU compile, without a GPU

SUBPROCESS_CHECK = """
import importlib.util, sys
import vdit_accel.kernels  # noqa: F401
bad = [m for m in sys.modules if (m.startswith("vdit_accel") and m.endswith(".triton")) or m.startswith("xformers")]
assert not bad, f"importing vdit_accel.kernels imported {bad}"
print("lean import ok")
if importlib.util.find_spec("triton") is None:
    sys.exit(0)
from vdit_accel.kernels.aot_check import compile_for_cuda, query_sparse_example_args, channel_reuse_example_args
from vdit_accel.kernels.query_sparse.triton import _query_sparse_fwd_kernel
from vdit_accel.kernels.channel_reuse.triton import _channel_reuse_fwd_kernel
for name, kern, args in [("query_sparse", _query_sparse_fwd_kernel, query_sparse_example_args()),
                         ("channel_reuse", _channel_reuse_fwd_kernel, channel_reuse_example_args())]:
    rep = compile_for_cuda(kern, args, arch=90, num_warps=8, num_stages=2)
    print(name, rep)
    assert rep.uses_wgmma, rep
    assert rep.spill_bytes in (0, None), rep
"""


def test_lean_import_and_kernels_compile_for_sm90_without_gpu():
    """In a fresh process without the interpreter: importing vdit_accel.kernels loads no kernel module (nor
    xformers); then both kernels compile to sm_90 cubins at Wan shapes (the interpreter accepts code the GPU
    compiler rejects), using wgmma and without register spills."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    res = subprocess.run([sys.executable, "-c", SUBPROCESS_CHECK], env=env, capture_output=True, text=True,
                         timeout=600)
    assert "lean import ok" in res.stdout, res.stderr[-3000:]
    no_toolchain = "GPUTarget" in res.stderr or ("ptxas" in res.stderr.lower() and "not found" in res.stderr)
    if res.returncode != 0 and no_toolchain:
        pytest.skip(f"cannot compile CUDA kernels on this machine: {res.stderr[-300:]}")
    assert res.returncode == 0, res.stderr[-3000:]
