"""Sequence parallelism (vdit_accel.parallel) with real torch.distributed processes: 2 ranks, gloo, CPU.

Every multi-process test starts real processes (``torch.multiprocessing.spawn`` or ``torchrun``) on free ports and
compares with a single-process run in this process:

* dense parallel output == dense single-process output (Ulysses, ring) for Wan and CogVideoX (joint attention);
* accelerated parallel output == accelerated single-process output with the same per-rank budgets (the single-process
  run selects per shard, ``testing.emulate_rank_selection``), Ulysses and ring, acceleration enabled before or after
  parallelism;
* bad sizes give a clear error on every rank before generation; a failing rank makes every rank exit, no hang;
* the CLI under torchrun writes the videos on rank 0 only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.multiprocessing as mp

from vdit_accel import parallel, testing
from vdit_accel.adapters import get_adapter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD = 2
# fp32 rounding of a different (but exact) attention order, amplified over 4 sampler steps: up to ~3e-5 on CogVideoX
# latents; a wrong parallel attention (e.g. local shard only) is off by ~1e-1
ATOL, RTOL = 1e-4, 1e-4
STEPS = 4
BUDGETS = [1.0, 0.3, 0.3, 0.3]  # 0.3·48 -> 15 tokens globally, 0.3·24 -> 8 per rank (16 in all)
SIZES = {"wan": dict(height=64, width=64, num_frames=9),  # grid 3x4x4 = 48 video tokens, 24 per rank
         "cogvideox": dict(height=64, width=64, num_frames=9),  # grid 3x4x4 = 48 video + 16 text tokens (split)
         "mochi": dict(height=64, width=64, num_frames=7),  # grid 2x4x4 = 32 video + 16 text tokens (whole per rank)
         "hunyuan": dict(height=32, width=32, num_frames=9,  # grid 3x4x4 = 48 video + padded text (whole per rank)
                         prompt_template={"template": "{}", "crop_start": 0})}
BUILDERS = {"wan": testing.build_tiny_wan_pipeline, "cogvideox": testing.build_tiny_cogvideox_pipeline,
            "mochi": testing.build_tiny_mochi_pipeline, "hunyuan": testing.build_tiny_hunyuan_video_pipeline}
LOCAL_VIDEO = {"wan": 24, "cogvideox": 24, "mochi": 16, "hunyuan": 24}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build(family: str):
    pipe = BUILDERS[family]()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(pipe, family: str, **overrides):
    kw = dict(prompt="a red circle moving right", negative_prompt="blurry", num_inference_steps=STEPS,
              guidance_scale=6.0, max_sequence_length=16, output_type="latent",
              generator=torch.Generator().manual_seed(0), **SIZES[family])
    kw.update(overrides)
    with torch.inference_mode():
        out = pipe(**kw).frames
    return out[0] if isinstance(out, (list, tuple)) else out


def _computed_fraction(pipe) -> float:
    import vdit_accel

    return vdit_accel.summary(pipe)["computed_token_fraction"]


# ------------------------------------------------------------------------------------------------ worker (each rank)
def _worker(rank: int, world: int, port: int, family: str, cases: list, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    import torch.distributed as dist

    import vdit_accel  # noqa: F401  (registers enable_acceleration)

    parallel.init_distributed(timeout_s=60)
    results = {}
    try:
        for name, spec, mode in cases:
            pipe = _build(family)
            if mode == "accel_before":
                pipe.enable_acceleration(schedule=BUDGETS)
            if mode == "accel_dense":  # budget 1.0: the dense computation through the accelerated path
                pipe.enable_acceleration(schedule=[1.0] * STEPS)
            parallel.enable_parallelism(pipe, spec)
            if mode == "accel_after":
                pipe.enable_acceleration(schedule=BUDGETS)
            if mode == "dense_error":
                try:
                    _latents(pipe, family)
                    results[name] = dict(error=None)
                except RuntimeError as e:
                    results[name] = dict(error=str(e))
                continue
            seen = []
            adapter = get_adapter(pipe.transformer)
            attn = getattr(adapter.blocks(pipe.transformer)[0][1], adapter.self_attention)
            handle = attn.register_forward_pre_hook(lambda m, a, kw: seen.append(
                (kw.get("hidden_states", a[0] if a else None).shape[1])), with_kwargs=True)
            results[name] = dict(latents=_latents(pipe, family), local_len=seen[0],
                                 fraction=_computed_fraction(pipe) if mode != "dense" else 1.0)
            handle.remove()
    finally:
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
        dist.destroy_process_group()


def _port_taken(text: str) -> bool:
    # another process (other test runs share the machine) may take the free port before rank 0 binds it
    return "address already in use" in text.lower() or "EADDRINUSE" in text


def _run_ranks(tmp_path, family: str, cases: list) -> list[dict]:
    for attempt in range(3):
        try:
            mp.spawn(_worker, args=(WORLD, _free_port(), family, cases, str(tmp_path)), nprocs=WORLD, join=True)
            break
        except mp.ProcessRaisedException as e:
            if attempt == 2 or not _port_taken(str(e)):
                raise
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]


def _reference(family: str, accelerated: bool):
    pipe = _build(family)
    if accelerated:
        pipe.enable_acceleration(schedule=BUDGETS)
        testing.emulate_rank_selection(pipe, WORLD)  # each rank's top-ceil(θ·N/2) of its own half
    return _latents(pipe, family), (_computed_fraction(pipe) if accelerated else 1.0)


@pytest.mark.parametrize("family", ["wan", "cogvideox"])
def test_parallel_matches_single_process(tmp_path, family):
    cases = [("dense_ulysses", "ulysses", "dense"), ("dense_ring", "ring", "dense"),
             ("accel_ulysses", "ulysses", "accel_before"), ("accel_ring", "ring=2", "accel_after")]
    ranks = _run_ranks(tmp_path, family, cases)
    dense, _ = _reference(family, accelerated=False)
    accel, accel_fraction = _reference(family, accelerated=True)
    assert 0.3 < accel_fraction < 1.0  # token selection really ran in the reference
    assert (accel - dense).abs().max() > 10 * ATOL  # ... and changed the result, so the comparisons below can fail
    for r, res in enumerate(ranks):
        for name, _, mode in cases:
            out = res[name]
            assert out["local_len"] == LOCAL_VIDEO[family], (name, out["local_len"])  # half of the 48 video tokens
            ref = dense if mode == "dense" else accel
            diff = (out["latents"] - ref).abs().max().item()
            print(f"{family} rank {r} {name}: max|diff| vs single process {diff:.2e}")
            assert torch.allclose(out["latents"], ref, atol=ATOL, rtol=RTOL), f"rank {r} {name}: max|diff| {diff}"
            if mode != "dense":
                assert out["fraction"] == pytest.approx(accel_fraction)  # same per-rank budgets
    # negative control: the global top-k (15 of 48, not 8 of each 24) is a different computation, which the
    # comparison above would notice if the per-rank selection were wrong
    pipe = _build(family)
    pipe.enable_acceleration(schedule=BUDGETS)
    global_topk = _latents(pipe, family)
    assert _computed_fraction(pipe) < accel_fraction
    assert not torch.allclose(global_topk, accel, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("family", ["mochi", "hunyuan"])
def test_parallel_joint_attention_with_whole_text(tmp_path, family):
    """Mochi / HunyuanVideo: joint [video, text] attention whose plan keeps the (padded, masked) text whole on every
    rank. The video keys go through diffusers' CP attention, the text keys are attended locally once, merged by LSE.
    Their own processors would be wrong under that plan (Mochi: F.sdpa on the local shard; HunyuanVideo: text keys
    counted once per rank), so a plain dense CP run must refuse with a clear error."""
    cases = [("dense_error", "ulysses", "dense_error"), ("dense_ulysses", "ulysses", "accel_dense"),
             ("accel_ulysses", "ulysses", "accel_before"), ("accel_ring", "ring", "accel_after")]
    ranks = _run_ranks(tmp_path, family, cases)
    dense, _ = _reference(family, accelerated=False)
    accel, accel_fraction = _reference(family, accelerated=True)
    assert (accel - dense).abs().max() > 10 * ATOL
    for r, res in enumerate(ranks):
        assert res["dense_error"]["error"] and "local shard" in res["dense_error"]["error"]
        for name, ref in (("dense_ulysses", dense), ("accel_ulysses", accel), ("accel_ring", accel)):
            out = res[name]
            assert out["local_len"] == LOCAL_VIDEO[family], (name, out["local_len"])
            diff = (out["latents"] - ref).abs().max().item()
            assert torch.allclose(out["latents"], ref, atol=ATOL, rtol=RTOL), f"rank {r} {name}: max|diff| {diff}"
        assert res["accel_ring"]["fraction"] == pytest.approx(accel_fraction)


# ------------------------------------------------------------------------------------------------ errors, no hangs
_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import torch
    import vdit_accel
    from vdit_accel import parallel, testing

    torch.set_num_threads(1)
    rank, world, _ = parallel.init_distributed(timeout_s=30)
    case = sys.argv[1]

    def main():
        pipe = testing.build_tiny_wan_pipeline()
        pipe.set_progress_bar_config(disable=True)
        kw = dict(prompt="a red circle", num_inference_steps=3, guidance_scale=1.0, max_sequence_length=16,
                  output_type="latent", height=64, width=64, num_frames=9)
        if case == "bad_size":
            kw.update(height=48, width=48, num_frames=1)  # grid 1x3x3 = 9 video tokens: not divisible by 2
        if case == "bad_heads":
            from diffusers import WanTransformer3DModel
            tr = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=3, attention_head_dim=12,
                                       in_channels=16, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32,
                                       num_layers=1, rope_max_seq_len=32)
            try:
                parallel.enable_parallelism(tr, "ulysses")
            finally:
                if tr._parallel_config is None and not hasattr(tr, "_diffusers_hook"):
                    print("nothing applied", flush=True)
        parallel.enable_parallelism(pipe, "ulysses")
        if case == "rank_fails" and rank == 1:
            block = pipe.transformer.blocks[1]
            calls = []
            def boom(module, args):
                calls.append(1)
                if len(calls) == 2:  # fail in the middle of the 2nd denoising step
                    raise RuntimeError("simulated failure on rank 1")
            block.register_forward_pre_hook(boom)
        with torch.inference_mode():
            pipe(**kw)
        print(f"rank {rank} finished", flush=True)

    parallel.run_guarded(main)
""")


def _launch_plain(tmp_path, case: str, timeout: float = 240):
    """Start 2 ranks as plain processes (no torchrun agent to kill the survivors): exit codes and outputs. The limit
    is generous because importing torch + diffusers alone takes ~30 s on this shared 2-core machine; a hang would
    last forever (the mesh's subgroups have the 30 min gloo default timeout)."""
    for attempt in range(3):
        codes, outs, seconds = _launch_plain_once(tmp_path, case, timeout)
        if attempt == 2 or not any(_port_taken(o) for o in outs):
            return codes, outs, seconds


def _launch_plain_once(tmp_path, case: str, timeout: float):
    script = tmp_path / "script.py"
    script.write_text(_SCRIPT)
    port = _free_port()
    procs = []
    for rank in range(WORLD):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
        procs.append(subprocess.Popen([sys.executable, str(script), case], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    t0 = time.monotonic()
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=max(1.0, timeout - (time.monotonic() - t0)))[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"ranks hung for more than {timeout} s in case {case!r}")
    return [p.returncode for p in procs], outs, time.monotonic() - t0


def test_bad_sequence_length_is_a_clear_error_on_every_rank(tmp_path):
    codes, outs, _ = _launch_plain(tmp_path, "bad_size")
    for code, out in zip(codes, outs):
        assert code != 0, out
        assert "1×3×3 = 9" in out and "divisible by 2" in out, out
        assert "finished" not in out


def test_failing_rank_makes_every_rank_exit(tmp_path):
    codes, outs, seconds = _launch_plain(tmp_path, "rank_fails")
    assert codes[1] != 0 and "simulated failure on rank 1" in outs[1], outs[1]
    assert codes[0] != 0, outs[0]  # rank 0 was waiting in a collective for rank 1: it must fail, not hang
    assert "finished" not in outs[0]
    assert seconds < 240


# ------------------------------------------------------------------------------------------------ in-process checks
def test_parse_parallel():
    cfg = parallel.parse_parallel("ulysses", 2)
    assert (cfg.ulysses_degree, cfg.ring_degree) == (2, 1)
    cfg = parallel.parse_parallel("ring", 4)
    assert (cfg.ulysses_degree, cfg.ring_degree) == (1, 4)
    cfg = parallel.parse_parallel("ulysses=2, ring=2", 4)
    assert (cfg.ulysses_degree, cfg.ring_degree) == (2, 2)
    with pytest.raises(ValueError, match="must equal the number of processes"):
        parallel.parse_parallel("ulysses=2,ring=2", 2)
    with pytest.raises(ValueError, match="cannot parse"):
        parallel.parse_parallel("ulyses=2", 2)
    with pytest.raises(ValueError, match="one rank"):
        parallel.parse_parallel("ulysses", 1)


def test_enable_parallelism_needs_torchrun():
    pipe = _build("wan")
    with pytest.raises(RuntimeError, match="torchrun"):
        parallel.enable_parallelism(pipe, "ulysses")


def test_heads_not_divisible_by_ulysses_degree(tmp_path):
    """3 heads, Ulysses degree 2: a clear error on both ranks from enable_parallelism, nothing applied."""
    codes, outs, _ = _launch_plain(tmp_path, "bad_heads")
    for code, out in zip(codes, outs):
        assert code != 0, out
        assert "3 attention heads, not divisible by the Ulysses degree 2" in out and "ring=2" in out, out
        assert "nothing applied" in out


def test_sharded_selector_matches_per_shard_selection():
    """The single-process emulation selects exactly what each rank selects on its own shard."""
    from vdit_accel.config import TokenSelectionConfig
    from vdit_accel.methods.token_selection import BlockCacheState, select_tokens

    g = torch.Generator().manual_seed(0)
    state = BlockCacheState()
    x = torch.randn(2, 12, 8, generator=g)
    state.last_input = torch.randn(2, 12, 8, generator=g)
    state.lse = torch.rand(2, 12, generator=g) * 3
    state.n_skip = torch.randint(0, 3, (2, 12), generator=g, dtype=torch.int32)
    cfg = TokenSelectionConfig()
    index = testing.sharded_selector(2)(state, x, 0.5, cfg)
    assert index.shape == (2, 6)
    for s in range(2):
        sub = BlockCacheState()
        sl = slice(6 * s, 6 * s + 6)
        sub.last_input, sub.lse, sub.n_skip = state.last_input[:, sl], state.lse[:, sl], state.n_skip[:, sl]
        local = select_tokens(sub, x[:, sl], 0.5, cfg)
        assert torch.equal(index[:, 3 * s:3 * s + 3], local + 6 * s)


def test_cli_under_torchrun_rank0_writes(tmp_path):
    out = tmp_path / "out"
    for _ in range(3):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(_free_port()), "-m", "vdit_accel.cli", "generate", "--prompt", "a red circle moving right",
               "--model", "tiny-wan", "--steps", "3", "--height", "64", "--width", "64", "--frames", "9",
               "--speedup", "1.3", "--parallel", "ulysses", "--device", "cpu", "--out", str(out)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
                             env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
        if not _port_taken(res.stdout + res.stderr):
            break
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (out / "dense.mp4").exists() and (out / "accelerated.mp4").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["parallel"] == {"ulysses_degree": 2, "ring_degree": 1, "world_size": 2}
    assert res.stdout.count("[vdit-accel] wrote") == 1  # rank 0 only
