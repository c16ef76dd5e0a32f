"""``vdit-accel demo``: serve the Gradio demo (dense vs accelerated, side by side)."""

from __future__ import annotations

import argparse

HELP = ("Start the Gradio demo: generate a video dense and accelerated side by side, with times, speedup, "
        "PSNR/SSIM, the per-step budget chart and a heatmap of recomputed tokens.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="'default' (bundled tiny model), 'tiny-wan', 'tiny-cogvideox', a local folder or a hub id")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 to serve the network)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", default=False,
                   help="also open a public gradio.live link (needs internet access)")


def run(args) -> int:
    import torch

    from .loading import load_pipeline
    from ..app import build_app

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}.")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(args.model, getattr(torch, args.dtype), device)
    demo = build_app(pipe, model_name=args.model)
    print(f"[vdit-accel] demo for model={args.model} on http://{args.host}:{args.port}", flush=True)
    try:
        demo.queue().launch(server_name=args.host, server_port=args.port, share=args.share, ssr_mode=False)
    except OSError as e:  # port taken, address not available
        reason = str(e).rstrip(".")
        raise RuntimeError(f"cannot serve on {args.host}:{args.port}: {reason}. Pick another --port.") from e
    return 0
