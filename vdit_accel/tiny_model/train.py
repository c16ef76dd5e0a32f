"""Train the bundled tiny text-to-video model from scratch on procedural clips (2 CPU cores, about an hour).

    OMP_WAIT_POLICY=PASSIVE python -m vdit_accel.tiny_model.train --out vdit_accel/assets/tiny-shapes-t2v --seed 0

Stages (all printed with losses, speed and schedule progress):

1. **VAE** (``AutoencoderKLWan``), in two phases on random 32×32 crops of freshly rendered 64×64 clips (the VAE is
   convolutional, and 4× fewer pixels buy 4× more steps on a CPU): MSE + 0.5·L1 with object pixels weighted 5×, a
   small KL term, decoded from the posterior mean. Even steps use 8 single frames (the spatial layers); odd steps
   use clips: 9 frames in phase 1 (``--vae-steps``), 17 frames in phase 2 (``--vae-long-steps``). The causal VAE
   runs the first frame alone, then chunks of 4 frames that read the previous chunk's conv cache; a VAE trained
   only on 5-frame clips decoded frames 6-17 of a 17-frame video at 14-18 dB (frames 1-5: 21-28 dB), and one
   trained on 9 frames still lost frames 10-17 (15-22 dB). Phase 2 trains the full 5-latent-frame path.
2. **Encode** ``--num-clips`` 17-frame 64×64 clips to posterior means once; their per-channel mean/std are written
   into the VAE config (``latents_mean`` / ``latents_std``), which is exactly how WanPipeline un-normalises.
3. **Transformer + text encoder** (``WanTransformer3DModel`` + ``UMT5EncoderModel``): rectified flow matching as
   ``FlowMatchEulerDiscreteScheduler`` integrates it: ``x_σ = (1-σ)·x0 + σ·ε``, target ``ε - x0``, timestep
   ``1000·σ``, σ uniform then shifted by the scheduler's ``shift``. Captions are dropped to "" 10 % of the time
   (WanPipeline's default negative prompt), so classifier-free guidance works. The EMA of the weights is saved.
4. ``WanPipeline.save_pretrained(out)`` (safetensors) plus ``training_log.json``.

``--stage vae`` runs stage 1 only (checkpoint in OUT/vae after each phase; re-running it picks up after the last
finished phase), ``--stage dit`` runs stages 2-4 on that VAE; ``--stage all`` (default) runs everything. Check a VAE
or a finished model with ``python -m vdit_accel.tiny_model.evaluate``.

Budget: ``--minutes`` is split VAE / encoding / transformer (``--vae-share``, ``--encode-share``, the rest). Each
phase runs its step count, or anneals its cosine schedule by wall-clock and stops early when its share of the time
runs out first (on a slow or shared machine), and logs which happened (``time_limited`` in the log).

Reproducible: ``--seed`` seeds python ``random``, numpy, torch and the procedural data; a run whose phases all
complete their step counts within budget gives the same numbers for the same thread count (``--threads``, default 2;
a list such as ``1,2`` re-times the choice every 100 steps, faster on a shared machine but not reproducible).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan

from . import build
from .data import make_dataset
from .tokenizer import build_tokenizer


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class _Progress:
    """Schedule progress in [0, 1]: by step count, or by wall-clock when the time budget runs out first.

    On a free machine every step runs and the run is reproducible step for step; on a busy (shared) machine the
    cosine schedule still anneals fully inside the budget instead of being cut off at a high learning rate.
    """

    def __init__(self, steps: int, budget_s: float, warmup: int):
        self.steps, self.budget_s, self.warmup, self.t0 = steps, budget_s, warmup, time.time()
        self.time_limited = False

    def __call__(self, step: int) -> float:
        by_time = (time.time() - self.t0) / self.budget_s
        return max(step / self.steps, by_time)

    def out_of_time(self, step: int) -> bool:
        """True (and the run is marked time-limited) when the budget ends the phase before its step count."""
        over = self(step) >= 1.0
        self.time_limited |= over
        return over

    def lr(self, step: int, peak: float, floor: float = 0.05) -> float:
        if step < self.warmup:
            return peak * (step + 1) / self.warmup
        p = min(1.0, self(step))
        # the wall clock set this step's learning rate: the run is no longer a function of the seed alone
        self.time_limited |= p > step / self.steps
        return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


class _ThreadTuner:
    """Re-picks torch's intra-op thread count every ``period`` steps by timing a few steps with each option.

    On a shared CPU two OpenMP threads can be several times *slower* than one (a descheduled thread stalls the
    other at every barrier); on a free machine two are about twice as fast. Measuring beats guessing.
    """

    def __init__(self, options=(1, 2), period: int = 100, probe: int = 4):
        self.options, self.period, self.probe = tuple(options), period, probe
        self.plan: list[int] = []
        self.times: dict[int, list[float]] = {}
        self.current = torch.get_num_threads()
        self.t = 0.0

    def before(self, step: int) -> None:
        if len(self.options) > 1 and step % self.period == 0 and not self.plan:
            self.plan = [o for o in self.options for _ in range(self.probe)]
            self.times = {o: [] for o in self.options}
        if self.plan:
            torch.set_num_threads(self.plan[0])
        self.t = time.perf_counter()

    def after(self) -> None:
        if not self.plan:
            return
        self.times[self.plan.pop(0)].append(time.perf_counter() - self.t)
        if not self.plan:
            med = {o: float(np.median(v[1:] or v)) for o, v in self.times.items()}  # first step of each warms up
            self.current = min(med, key=med.get)
            torch.set_num_threads(self.current)


def _to_model(videos_u8: np.ndarray) -> torch.Tensor:
    """uint8 [N, F, H, W, 3] → float [N, 3, F, H, W] in [-1, 1]."""
    return torch.from_numpy(videos_u8).float().div_(127.5).sub_(1.0).permute(0, 4, 1, 2, 3).contiguous()


def train_vae(vae, steps: int, seed: int, budget_s: float, batch: int = 3, frames: int = 9, crop: int = 32,
              lr: float = 1.5e-3, kl_weight: float = 1e-4, sample_posterior: bool = False, log_every: int = 25,
              threads=(2,), warmup: int = 30, phase: str = "vae", data_offset: int = 0) -> dict:
    """Train ``vae`` for ``steps`` steps; ``data_offset`` shifts the clip seeds (another phase, other clips)."""
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    prog, tuner = _Progress(steps, budget_s, warmup=warmup), _ThreadTuner(threads)
    t0 = time.time()
    hist, run = [], []
    done = 0
    for step in range(steps):
        if prog.out_of_time(step):
            _log(f"{phase}: time budget used up, annealed and stopped at step {step}/{steps}")
            break
        for g in opt.param_groups:
            g["lr"] = prog.lr(step, lr)
        tuner.before(step)
        # Even steps: single frames, 8 of them (cheap; trains the spatial layers, which is most of the work). Odd
        # steps: `frames`-frame clips. WanVAE runs the first frame alone and then chunks of 4 frames, each chunk
        # reading the causal-conv cache left by the previous one; `frames` = 9 (1 + 4 + 4) is the shortest clip in
        # which a chunk follows a 4-frame chunk, the state every later chunk of a 17-frame video is in. Training on
        # 5-frame clips only (1 + 4) left frames 6-17 at 14-18 dB while frames 1-5 reached 21-28 dB.
        f_step, b_step = (1, 8) if step % 2 == 0 else (frames, batch)
        vids, _, masks = make_dataset(b_step, seed=seed * 1_000_003 + 17 + step + data_offset,
                                      num_frames=f_step)
        if crop:  # random crops: the VAE is convolutional, and 4x fewer pixels buy 4x more steps on a CPU
            rs = np.random.default_rng(seed + step)
            y0, x0 = (int(v) for v in rs.integers(0, 64 - crop + 1, 2))
            vids, masks = vids[:, :, y0 : y0 + crop, x0 : x0 + crop], masks[:, :, y0 : y0 + crop, x0 : x0 + crop]
        x = _to_model(vids)
        w = 1.0 + 4.0 * torch.from_numpy(masks).float().div_(255.0).unsqueeze(1)  # [B, 1, F, H, W]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample() if sample_posterior else post.mode()).sample
        err = rec - x
        rec_loss = (err.pow(2) * w).mean() + 0.5 * (err.abs() * w).mean()
        kl = post.kl().mean() / post.mean[0].numel()
        loss = rec_loss + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        tuner.after()
        done = step + 1
        mse = err.detach().pow(2).mean().item()
        run.append((loss.item(), mse, kl.item()))
        if (step + 1) % log_every == 0 or step == steps - 1:
            l, m, k = np.mean(run, axis=0)
            psnr = 10 * math.log10(4.0 / max(m, 1e-12))  # data range 2 in [-1, 1]
            el = time.time() - t0
            _log(f"{phase} step {step + 1}/{steps} loss {l:.4f} mse {m:.5f} (psnr {psnr:.1f} dB) kl/elem {k:.3f} "
                 f"lr {opt.param_groups[0]['lr']:.2e} {el:.0f}s ({(step + 1) / el:.2f} it/s, "
                 f"{tuner.current} threads, progress {min(1.0, prog(step + 1)):.2f})")
            hist.append({"step": step + 1, "loss": float(l), "mse": float(m), "psnr_db": psnr, "kl": float(k)})
            run = []
    vae.eval()
    return {"steps": done, "seconds": time.time() - t0, "time_limited": prog.time_limited, "history": hist,
            "threads_last": tuner.current}


@torch.no_grad()
def encode_clips(vae, num_clips: int, seed: int, budget_s: float = float("inf"), min_clips: int = 256,
                 batch: int = 16) -> tuple[torch.Tensor, list[str]]:
    """Posterior means of ``num_clips`` 17-frame clips (fewer, but at least ``min_clips``, if ``budget_s`` runs out)."""
    videos, captions, _ = make_dataset(num_clips, seed=seed * 1_000_003 + 999_983)
    lat, t0 = [], time.time()
    for i in range(0, num_clips, batch):
        if i >= min_clips and time.time() - t0 > budget_s:
            _log(f"encode: time budget used up after {i}/{num_clips} clips")
            break
        lat.append(vae.encode(_to_model(videos[i : i + batch])).latent_dist.mode())
    mu = torch.cat(lat)
    return mu, captions[: mu.shape[0]]


def _text_embeds(text_encoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Same as WanPipeline._get_t5_prompt_embeds: run with the mask, then zero everything past the real length.
    h = text_encoder(ids, mask).last_hidden_state
    return h * mask.unsqueeze(-1).to(h.dtype)


@torch.no_grad()
def _ema_update(ema, model, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1.0 - decay)


def train_dit(transformer, text_encoder, tokenizer, latents: torch.Tensor, captions: list[str], steps: int,
              seed: int, budget_s: float, batch: int = 8, lr: float = 8e-4, shift: float = build.SHIFT,
              cfg_drop: float = 0.1, max_len: int = build.MAX_SEQUENCE_LENGTH, log_every: int = 50,
              threads=(2,)):
    g = torch.Generator().manual_seed(seed * 7 + 1)
    tok = tokenizer(captions + [""], padding="max_length", max_length=max_len, truncation=True,
                    add_special_tokens=True, return_tensors="pt")
    ids_all, mask_all = tok.input_ids, tok.attention_mask
    empty = len(captions)
    n = latents.shape[0]
    ema_tr, ema_te = copy.deepcopy(transformer).eval(), copy.deepcopy(text_encoder).eval()
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    transformer.train()
    text_encoder.train()
    prog, tuner = _Progress(steps, budget_s, warmup=100), _ThreadTuner(threads)
    t0 = time.time()
    hist, run = [], []
    done = 0
    for step in range(steps):
        if prog.out_of_time(step):
            _log(f"dit: time budget used up, annealed and stopped at step {step}/{steps}")
            break
        for gr in opt.param_groups:
            gr["lr"] = prog.lr(step, lr)
        tuner.before(step)
        idx = torch.randint(0, n, (batch,), generator=g)
        x0 = latents[idx]
        cap = torch.where(torch.rand(batch, generator=g) < cfg_drop, torch.full_like(idx, empty), idx)
        u = torch.rand(batch, generator=g)
        sigma = shift * u / (1 + (shift - 1) * u)
        noise = torch.randn(x0.shape, generator=g)
        s = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        emb = _text_embeds(text_encoder, ids_all[cap], mask_all[cap])
        pred = transformer(xt, timestep=sigma * 1000.0, encoder_hidden_states=emb, return_dict=False)[0]
        loss = F.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        tuner.after()
        done = step + 1
        decay = min(0.998, (1 + step) / (10 + step))
        _ema_update(ema_tr, transformer, decay)
        _ema_update(ema_te, text_encoder, decay)
        run.append(loss.item())
        if (step + 1) % log_every == 0 or step == steps - 1:
            el = time.time() - t0
            _log(f"dit step {step + 1}/{steps} loss {np.mean(run):.4f} lr {opt.param_groups[0]['lr']:.2e} "
                 f"{el:.0f}s ({(step + 1) / el:.2f} it/s, {tuner.current} threads, "
                 f"progress {min(1.0, prog(step + 1)):.2f})")
            hist.append({"step": step + 1, "loss": float(np.mean(run))})
            run = []
    return ema_tr, ema_te, {"steps": done, "seconds": time.time() - t0, "time_limited": prog.time_limited,
                            "history": hist}


def _write_log(path: str, log: dict) -> None:
    with open(path, "w") as f:
        json.dump(log, f, indent=1)


def _world_readable(folder: str) -> None:
    for root, _, files in os.walk(folder):  # safetensors are written 0600; package data should be world-readable
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)


_VAE_ARGS = ("seed", "vae_steps", "vae_long_steps", "vae_frames", "vae_batch", "vae_lr", "vae_long_lr", "threads")


def _read_vae_log(vae_log: str, args) -> dict | None:
    """The VAE log of an earlier run with the same VAE settings, or None."""
    if not os.path.isfile(vae_log):
        return None
    with open(vae_log) as f:
        log = json.load(f)
    if any(log["args"].get(k) != getattr(args, k) for k in _VAE_ARGS):
        return None
    return log


def _vae_stage(args, vae, vae_dir: str, vae_log: str, budget: float, threads) -> dict:
    """Stage 1: phase 1 (1- and ``--vae-frames``-frame clips), then phase 2 (1- and 17-frame clips, the decoder's
    full causal cache: later chunks drift where only shorter clips were trained). Each phase ends with a
    checkpoint in OUT/vae, and a run with the same VAE settings picks up after the last finished phase."""
    log = _read_vae_log(vae_log, args)
    done = log["phases_done"] if log else 0
    if done == 2:
        _log(f"stage 1/3: VAE already trained in {vae_dir}")
        return log["vae"]
    share = budget * args.vae_share
    long_share = share * args.vae_long_steps * 1.3 / (args.vae_steps + args.vae_long_steps * 1.3)  # 1.3x per step
    if done == 1:
        _log(f"stage 1/3: VAE phase 1 loaded from {vae_dir}")
        vae.load_state_dict(AutoencoderKLWan.from_pretrained(vae_dir).state_dict())
        info1 = log["phase1"]
    else:
        _log(f"stage 1/3: VAE phase 1 ({args.vae_steps} steps, 1/{args.vae_frames}-frame clips)")
        info1 = train_vae(vae, args.vae_steps, args.seed, share - long_share, batch=args.vae_batch,
                          frames=args.vae_frames, lr=args.vae_lr, threads=threads)
        vae.save_pretrained(vae_dir, safe_serialization=True)
        _write_log(vae_log, {"args": vars(args), "torch": torch.__version__, "phases_done": 1, "phase1": info1})
    _log(f"stage 1/3: VAE phase 2 ({args.vae_long_steps} steps, 1/17-frame clips)")
    info2 = train_vae(vae, args.vae_long_steps, args.seed, long_share, batch=2, frames=17, lr=args.vae_long_lr,
                      threads=threads, warmup=10, phase="vae-long", data_offset=500_000)
    vae.save_pretrained(vae_dir, safe_serialization=True)
    info = {"steps": info1["steps"] + info2["steps"], "seconds": info1["seconds"] + info2["seconds"],
            "time_limited": info1["time_limited"] or info2["time_limited"],
            "history": info1["history"] + [{**h, "step": h["step"] + info1["steps"]} for h in info2["history"]],
            "threads_last": info2["threads_last"],
            "phases": [{k: v for k, v in ph.items() if k != "history"} for ph in (info1, info2)]}
    _write_log(vae_log, {"args": vars(args), "torch": torch.__version__, "phases_done": 2, "phase1": info1,
                         "vae": info})
    return info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (WanPipeline.save_pretrained layout)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stage", choices=("all", "vae", "dit"), default="all",
                    help="all: the whole run; vae: stage 1 only, saved to OUT/vae; dit: stages 2-3 on the VAE\n"
                         "in OUT/vae (vae then dit gives the same weights as all, with the same --threads)")
    ap.add_argument("--minutes", type=float, default=70.0,
                    help="wall-clock budget of the whole run; stages anneal early if a busy machine needs it")
    ap.add_argument("--vae-share", type=float, default=0.42, help="share of --minutes for the VAE")
    ap.add_argument("--encode-share", type=float, default=0.07, help="share of --minutes for pre-encoding clips")
    ap.add_argument("--vae-steps", type=int, default=3000, help="VAE phase 1 steps (1- and --vae-frames-frame clips)")
    ap.add_argument("--vae-long-steps", type=int, default=1200, help="VAE phase 2 steps (1- and 17-frame clips)")
    ap.add_argument("--dit-steps", type=int, default=6000)
    ap.add_argument("--num-clips", type=int, default=1600, help="17-frame clips pre-encoded for the transformer")
    ap.add_argument("--vae-frames", type=int, default=9, help="frames of the multi-frame VAE clips (4k+1)")
    ap.add_argument("--vae-batch", type=int, default=3, help="clips per multi-frame VAE step (8 on 1-frame steps)")
    ap.add_argument("--dit-batch", type=int, default=8)
    ap.add_argument("--vae-lr", type=float, default=1.5e-3)
    ap.add_argument("--vae-long-lr", type=float, default=4e-4)
    ap.add_argument("--dit-lr", type=float, default=8e-4)
    ap.add_argument("--threads", type=str, default="2",
                    help="intra-op thread count; a list such as '1,2' re-times the choice every 100 steps\n"
                         "(faster on a shared machine, but the run is then not bit-reproducible)")
    args = ap.parse_args(argv)
    if (args.vae_frames - 1) % 4:
        ap.error(f"--vae-frames must be 4k+1 (WanVAE's temporal chunks), got {args.vae_frames}")

    threads = tuple(int(t) for t in args.threads.split(","))
    torch.set_num_threads(max(threads))
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    t_start = time.time()
    budget = 60.0 * args.minutes
    _log(f"args {vars(args)}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")

    tokenizer = build_tokenizer()
    torch.manual_seed(args.seed)
    vae = build.build_vae()  # built in every stage so the text encoder and transformer get the same initial weights
    text_encoder = build.build_text_encoder(len(tokenizer))
    transformer = build.build_transformer()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    _log(f"params: vae {count(vae) / 1e6:.3f}M text_encoder {count(text_encoder) / 1e6:.3f}M "
         f"transformer {count(transformer) / 1e6:.3f}M")
    os.makedirs(args.out, exist_ok=True)
    vae_dir, vae_log = os.path.join(args.out, "vae"), os.path.join(args.out, "training_log_vae.json")

    if args.stage in ("all", "vae"):
        vae_info = _vae_stage(args, vae, vae_dir, vae_log, budget, threads)
        if args.stage == "vae":
            _world_readable(args.out)
            _log(f"VAE saved to {vae_dir} ({vae_info['seconds'] / 60:.1f} min); continue with --stage dit")
            return
    else:
        log = _read_vae_log(vae_log, args)
        if log is None or log["phases_done"] != 2:
            raise SystemExit(f"--stage dit needs a trained VAE: run --stage vae --out {args.out} first")
        vae.load_state_dict(AutoencoderKLWan.from_pretrained(vae_dir).state_dict())  # config stays path-free
        vae.eval()
        vae_info = log["vae"]
        _log(f"stage 1/3: VAE loaded from {vae_dir} (trained {vae_info['steps']} steps)")
    t_dit_start = time.time()
    # The stages after the VAE get the rest of the budget as if the VAE had used exactly its share.
    rest = budget * (1 - args.vae_share)

    _log(f"stage 2/3: encoding {args.num_clips} clips")
    torch.set_num_threads(vae_info["threads_last"])  # what was fastest at the end of the VAE stage
    mu, captions = encode_clips(vae, args.num_clips, args.seed, budget_s=budget * args.encode_share)
    encode_s = time.time() - t_dit_start
    lat_mean = mu.mean(dim=(0, 2, 3, 4))
    lat_std = mu.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
    vae.register_to_config(latents_mean=[round(float(v), 5) for v in lat_mean],
                           latents_std=[round(float(v), 5) for v in lat_std])
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    latents = ((mu - mean) / std).contiguous()
    _log(f"encoded {tuple(mu.shape)} in {encode_s:.0f}s; latent std per channel "
         f"{[round(float(v), 3) for v in lat_std]}")

    _log("stage 3/3: transformer + text encoder (flow matching)")
    dit_budget = rest - (time.time() - t_dit_start) - 15.0  # keep a few seconds for saving
    ema_tr, ema_te, dit_info = train_dit(transformer, text_encoder, tokenizer, latents, captions, args.dit_steps,
                                         args.seed, dit_budget, batch=args.dit_batch, lr=args.dit_lr,
                                         threads=threads)

    pipe = build.build_pipeline(seed=args.seed, vae=vae, text_encoder=ema_te, transformer=ema_tr,
                                tokenizer=tokenizer)
    pipe.save_pretrained(args.out, safe_serialization=True)
    if os.path.exists(vae_log):
        os.remove(vae_log)  # folded into training_log.json
    total = vae_info["seconds"] + (time.time() - t_dit_start)
    log = {
        "args": vars(args),
        "torch": torch.__version__,
        "total_seconds": total,
        "vae": vae_info,
        "encode": {"clips": int(mu.shape[0]), "seconds": encode_s},
        "dit": dit_info,
        "final": {
            "vae_mse": vae_info["history"][-1]["mse"] if vae_info["history"] else None,
            "vae_psnr_db": vae_info["history"][-1]["psnr_db"] if vae_info["history"] else None,
            "dit_loss": dit_info["history"][-1]["loss"] if dit_info["history"] else None,
        },
    }
    _write_log(os.path.join(args.out, "training_log.json"), log)
    _world_readable(args.out)
    _log(f"saved to {args.out}; total {total / 60:.1f} min; final {log['final']}")


if __name__ == "__main__":
    main()
