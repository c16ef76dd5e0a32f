"""Video transformers of diffusers that vdit-accel refuses on purpose, each with the reason (listed in
``docs/families.md``). ``get_adapter`` raises a ``ValueError`` with the reason before anything is installed."""

from __future__ import annotations

REFUSED: dict[str, str] = {
    "Kandinsky5Transformer3DModel": (
        "its blocks take the visual tokens as a [B, F, H, W, C] grid (optionally reordered for its NABLA block-sparse "
        "attention), not the [B, N, C] token rows token selection gathers from"
    ),
    "LTX2VideoTransformer3DModel": (
        "every block couples the video and audio streams with audio-to-video and video-to-audio cross-attention, "
        "so a cached video token would feed stale keys to the audio stream; accelerating the video stream alone "
        "needs a block hook that merges two streams, which is not written yet"
    ),
    "WanAnimate2Transformer3DModel": (
        "its attention keeps a key/value cache across inference segments (WanAnimate2KVCache), which the query-sparse "
        "processor would have to fill for unselected tokens too"
    ),
}
