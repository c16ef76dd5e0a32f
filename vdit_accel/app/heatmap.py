"""Which video tokens were recomputed at each denoising step, as numbers and as a heatmap video.

Token selection records, per (step, CFG context) and per block, the indices ``[B, K]`` of the video tokens the block
recomputed (``AccelRuntime.masks`` with ``record_masks = True``). A block that recorded nothing in a call ran
densely (budget 1.0, or the first call of a context, when there is nothing cached yet).

:func:`recompute_fractions` turns that into ``[S, F', H', W']``: for each step, the fraction of block executions
(all blocks × CFG branches × samples of that step) that recomputed each latent token; 1.0 means every block
recomputed it, 0.0 means every block reused its cached result.

:func:`heatmap_frames` draws it: one video frame per denoising step, showing the F' latent frames left to right,
each upsampled (nearest) to the generated video's size, coloured with the ``magma`` colormap (black = reused by
every block, pale yellow = recomputed by every block), above a caption bar ``step i/n · budget b · computed c%``.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch

CAPTION_HEIGHT = 20
TILE_GAP = 2


def recompute_fractions(masks: dict, calls: Iterable[tuple[int, str, int]], grid: Sequence[int],
                        num_steps: int) -> torch.Tensor:
    """Per-step fraction of block executions that recomputed each latent token.

    Args:
        masks: ``{(step, context): {block_name: index [B, K]}}`` as recorded in ``AccelRuntime.masks``; indices point
            into the ``F'·H'·W'`` video tokens, flattened frame-major.
        calls: one ``(step, context, num_blocks)`` or ``(step, context, num_blocks, skipped)`` per transformer call
            of the run (from ``AccelRuntime.records``). Blocks of a call without a recorded index ran densely; a
            skipped call (budget 0, the output forecast) recomputed nothing.
        grid: the latent token grid ``(F', H', W')``.
        num_steps: number of denoising steps; steps with no recorded call count as dense.

    Returns:
        float tensor ``[num_steps, F', H', W']`` in [0, 1].
    """
    f, h, w = (int(v) for v in grid)
    n = f * h * w
    computed = torch.zeros(num_steps, n, dtype=torch.float64)
    executions = torch.zeros(num_steps, dtype=torch.float64)
    for step, context, num_blocks, *rest in calls:
        if rest and rest[0] and 0 <= step < num_steps:
            executions[step] += 1  # a skipped call: no token recomputed
            continue
        if not 0 <= step < num_steps or num_blocks <= 0:
            continue
        recorded = masks.get((step, context), {})
        dense_blocks = num_blocks - len(recorded)
        computed[step] += max(dense_blocks, 0)
        executions[step] += num_blocks
        for index in recorded.values():
            index = torch.as_tensor(index).long().reshape(index.shape[0], -1)  # [B, K]
            hits = torch.zeros(index.shape[0], n, dtype=torch.float64)
            hits.scatter_(1, index, 1.0)
            computed[step] += hits.mean(dim=0)  # a block of a batched call counts once, averaged over samples
    dense = executions == 0
    executions[dense] = 1.0
    out = computed / executions[:, None]
    out[dense] = 1.0
    return out.clamp_(0.0, 1.0).reshape(num_steps, f, h, w).float()


def runtime_calls(runtime) -> list[tuple[int, str, int, bool]]:
    """``(step, context, num_blocks, skipped)`` of every transformer call recorded by an :class:`AccelRuntime`."""
    return [(r.step, r.context, r.blocks, r.skipped) for r in runtime.records]


def _colormap_lut(name: str = "magma") -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)  # [256, 3]


def _caption(width: int, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    from PIL import ImageFont

    img = Image.new("RGB", (width, CAPTION_HEIGHT), (24, 24, 27))
    try:
        font = ImageFont.load_default(size=CAPTION_HEIGHT - 6)  # Pillow >= 10.1 scales its built-in font
    except TypeError:
        font = ImageFont.load_default()
    ImageDraw.Draw(img).text((4, 2), text, fill=(235, 235, 235), font=font)
    return np.asarray(img)


def heatmap_frames(fractions: torch.Tensor, video_size: tuple[int, int], budgets: Sequence[float] | None = None,
                   min_tile_height: int = 128) -> torch.Tensor:
    """Render ``[S, F', H', W']`` fractions as frames ``[S, 3, H_out, W_out]`` in [0, 1] (one frame per step).

    Each frame shows the F' latent frames side by side, each upsampled (nearest) to ``video_size`` (scaled up by an
    integer factor until it is at least ``min_tile_height`` pixels tall), above a caption with the step, the
    scheduled budget and the fraction of tokens computed. Output sizes are even, as H.264 requires.
    """
    if fractions.dim() != 4:
        raise ValueError(f"`fractions` must be [steps, F', H', W'], got shape {tuple(fractions.shape)}.")
    steps, f, _, _ = fractions.shape
    height, width = (int(v) for v in video_size)
    scale = max(1, -(-min_tile_height // height))
    tile_h, tile_w = height * scale, width * scale
    tile_h, tile_w = tile_h + tile_h % 2, tile_w + tile_w % 2
    tiles = torch.nn.functional.interpolate(fractions.float().reshape(steps * f, 1, *fractions.shape[2:]),
                                            size=(tile_h, tile_w), mode="nearest")
    tiles = tiles.reshape(steps, f, tile_h, tile_w)
    lut = _colormap_lut()
    total_w = f * tile_w + (f - 1) * TILE_GAP
    frames = []
    for s in range(steps):
        body = np.full((tile_h, total_w, 3), 255, dtype=np.uint8)
        for j in range(f):
            levels = (tiles[s, j].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            x0 = j * (tile_w + TILE_GAP)
            body[:, x0:x0 + tile_w] = lut[levels]
        budget = f" · budget {budgets[s]:.2f}" if budgets is not None and s < len(budgets) else ""
        text = f"step {s + 1}/{steps}{budget} · computed {float(fractions[s].mean()) * 100:.0f}%"
        frames.append(np.concatenate([body, _caption(total_w, text)], axis=0))  # caption below: players overlay the top
    arr = np.stack(frames)  # [S, H_out, W_out, 3]
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def heatmap_summary(fractions: torch.Tensor) -> list[dict[str, Any]]:
    """Per step: mean, min and max fraction of block executions that recomputed a token."""
    flat = fractions.reshape(fractions.shape[0], -1)
    return [dict(step=i, mean=float(row.mean()), min=float(row.min()), max=float(row.max()))
            for i, row in enumerate(flat)]
