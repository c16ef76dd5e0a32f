"""Compile a Triton kernel for a CUDA architecture on a machine without a GPU, and read ptxas' resource report.

The interpreter checks the numbers but accepts code the GPU compiler rejects; this checks the other half. It mimics
the JIT's specialisation of a real launch (integer arguments equal to 1 become constants, pointers and integers
divisible by 16 carry the divisibility hint), runs the full pipeline down to a cubin with the ptxas bundled in the
triton wheel, and reports registers, spills and shared memory. Used by the tests and by hand::

    python -m vdit_accel.kernels.aot_check      # prints the report for both kernels at Wan2.1 shapes
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "int32": "i32", "int64": "i64", "int8": "i8"}


@dataclass
class CompileReport:
    arch: int
    num_warps: int
    num_stages: int
    registers: int | None
    spill_bytes: int | None
    shared_bytes: int
    uses_wgmma: bool

    def __str__(self) -> str:
        return (f"sm_{self.arch} warps={self.num_warps} stages={self.num_stages}: registers={self.registers} "
                f"spills={self.spill_bytes}B shared={self.shared_bytes}B wgmma={self.uses_wgmma}")


def compile_for_cuda(kernel, args: dict[str, Any], *, arch: int = 90, num_warps: int = 4,
                     num_stages: int = 2) -> CompileReport:
    """Compile ``kernel`` (a ``@triton.jit`` function) for ``sm_<arch>`` with the given arguments.

    ``args`` maps every kernel parameter to an example value: a dtype name (``"bfloat16"``) for pointer arguments,
    an ``int`` or ``float`` for scalars, and the constexpr values themselves (pass constexprs as
    ``("constexpr", value)``).
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(kernel.arg_names):
        val = args[name]
        if isinstance(val, tuple) and val and val[0] == "constexpr":
            signature[name], constexprs[(i,)] = "constexpr", val[1]
        elif isinstance(val, str):
            signature[name] = "*" + _DTYPES[val]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(val, bool) or isinstance(val, float):
            signature[name] = "fp32" if isinstance(val, float) else "i1"
        elif isinstance(val, int):
            if val == 1:
                signature[name], constexprs[(i,)] = "constexpr", 1
            else:
                signature[name] = "i32" if abs(val) < 2**31 else "i64"
                if val % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            raise TypeError(f"compile_for_cuda: unsupported example value for {name!r}: {val!r}")
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    ptx = compiled.asm["ptx"]
    registers = spills = None
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        sm = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        # The wheel ships two ptxas builds; the PTX version triton emits may need the newer one.
        for exe in ("ptxas-blackwell", "ptxas"):
            ptxas = os.path.join(bindir, exe)
            if not os.path.exists(ptxas):
                continue
            res = subprocess.run([ptxas, "-v", f"-arch={sm}", path, "-o", os.devnull], capture_output=True, text=True)
            m = re.search(r"Used (\d+) registers", res.stderr)
            if res.returncode == 0 and m:
                registers = int(m.group(1))
                spills = sum(int(x) for x in re.findall(r"(\d+) bytes spill stores", res.stderr))
                break
    return CompileReport(arch, num_warps, num_stages, registers, spills, int(compiled.metadata.shared),
                         "wgmma" in ptx)


def query_sparse_example_args(*, dtype: str = "bfloat16", D: int = 128, block_m: int = 128, block_n: int = 64,
                              H: int = 12, S: int = 32760) -> dict[str, Any]:
    """Example arguments of ``_query_sparse_fwd_kernel`` at a [B, S, H, D] contiguous layout (Wan2.1-1.3B)."""
    c = lambda v: ("constexpr", v)  # noqa: E731
    return dict(
        q=dtype, k=dtype, v=dtype, q_index="int64", out=dtype, lse="float32",
        stride_qb=S * H * D, stride_qs=H * D, stride_qh=D, stride_qd=1,
        stride_kb=S * H * D, stride_ks=H * D, stride_kh=D, stride_kd=1,
        stride_vb=S * H * D, stride_vs=H * D, stride_vh=D, stride_vd=1,
        stride_ib=S, stride_ik=1,
        stride_ob=S * H * D, stride_os=H * D, stride_oh=D, stride_od=1,
        stride_lb=S * H, stride_lk=H, stride_lh=1,
        H=H, K_SEL=S // 2 + 3, S_KV=S, D=D, qk_scale=0.1,
        HAS_INDEX=c(True), SCATTER=c(False), BLOCK_M=c(block_m), BLOCK_N=c(block_n), BLOCK_D=c(D),
        DOT_F32=c(False), PRECISION=c("tf32"),
    )


def channel_reuse_example_args(*, dtype: str = "bfloat16", D: int = 128, tile_tokens: int = 32,
                               tiles_per_group: int = 4, block_n: int = 64, block_c: int = 16, H: int = 12,
                               S: int = 32760) -> dict[str, Any]:
    """Example arguments of ``_channel_reuse_fwd_kernel`` at a [B, S, H, D] contiguous layout (Wan2.1-1.3B)."""
    c = lambda v: ("constexpr", v)  # noqa: E731
    G = 200
    nc = -(-D // block_c)
    return dict(
        q=dtype, k=dtype, v=dtype, tile_index="int32", reuse="int8", out=dtype, lse="float32",
        stride_qb=S * H * D, stride_qs=H * D, stride_qh=D, stride_qd=1,
        stride_kb=S * H * D, stride_ks=H * D, stride_kh=D, stride_kd=1,
        stride_vb=S * H * D, stride_vs=H * D, stride_vh=D, stride_vd=1,
        stride_rb=H * G * nc, stride_rh=G * nc, stride_rg=nc, stride_rc=1,
        stride_ob=S * H * D, stride_os=H * D, stride_oh=D, stride_od=1,
        stride_lb=S * H, stride_ls=H, stride_lh=1,
        H=H, S_KV=S, D=D, qk_scale=0.1,
        T=c(tiles_per_group), BLOCK_M=c(tile_tokens), BLOCK_N=c(block_n), BLOCK_C=c(block_c), NUM_C=c(nc), BLOCK_D=c(D),
        DOT_F32=c(False), PRECISION=c("tf32"),
    )


def main() -> None:  # pragma: no cover - manual report
    from .channel_reuse.triton import _channel_reuse_fwd_kernel
    from .query_sparse.triton import _query_sparse_fwd_kernel

    for arch in (80, 90):
        for bm, bn, w, s in ((128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3)):
            rep = compile_for_cuda(_query_sparse_fwd_kernel, query_sparse_example_args(block_m=bm, block_n=bn),
                                   arch=arch, num_warps=w, num_stages=s)
            print(f"query_sparse BLOCK_M={bm} BLOCK_N={bn}: {rep}")
        for tt, t, bn, w, s in ((32, 4, 64, 8, 2), (16, 8, 64, 8, 2), (32, 4, 32, 4, 2)):
            rep = compile_for_cuda(_channel_reuse_fwd_kernel,
                                   channel_reuse_example_args(tile_tokens=tt, tiles_per_group=t, block_n=bn),
                                   arch=arch, num_warps=w, num_stages=s)
            print(f"channel_reuse tile={tt}x{t} BLOCK_N={bn}: {rep}")


if __name__ == "__main__":  # pragma: no cover
    main()
