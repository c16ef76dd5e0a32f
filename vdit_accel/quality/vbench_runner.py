"""VBench 0.1.5 in its own virtual environment: creation, one subprocess per evaluation, result parsing, tables.

VBench pins ``transformers==4.33.2`` (and ``numpy<2``), which conflicts with diffusers 0.42, so it never runs in
the project's environment. :func:`setup_venv` creates a separate venv (``torch==2.13.0``, ``vbench==0.1.5 --no-deps``
and the few packages ``import vbench`` needs); :func:`run_vbench` runs VBench there in a subprocess and reads back
``{name}_eval_results.json``.

What can run depends on what is on the machine, and nothing is downloaded implicitly:

* ``temporal_flickering`` needs no model weights; it is the only dimension that runs offline.
* Every other dimension needs model weights in ``VBENCH_CACHE_DIR`` (default ``~/.cache/vbench``, listed in
  :data:`DIMENSION_WEIGHTS`) and a ``torchvision`` that imports in the VBench venv. Missing weights skip the
  dimension with the files and their download addresses, unless ``allow_downloads=True`` lets VBench fetch them.
* Six dimensions need the auxiliary information of VBench's standard prompt suite and are skipped for custom
  prompts (:data:`STANDARD_SUITE_ONLY`).

Without a VBench venv, :func:`offline_dimension_scores` computes ``temporal_flickering`` with
:func:`vdit_accel.quality.temporal_flicker` (VBench's formula) on the decoded mp4 files, as VBench would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Iterable

VBENCH_VERSION = "0.1.5"

# VBench's own order (VBench.build_full_dimension_list).
ALL_DIMENSIONS: tuple[str, ...] = (
    "subject_consistency", "background_consistency", "aesthetic_quality", "imaging_quality", "object_class",
    "multiple_objects", "color", "spatial_relationship", "scene", "temporal_style", "overall_consistency",
    "human_action", "temporal_flickering", "motion_smoothness", "dynamic_degree", "appearance_style",
)
WEIGHT_FREE = ("temporal_flickering",)
# VBench.check_dimension_requires_extra_info: rejected in custom_input mode.
STANDARD_SUITE_ONLY = ("object_class", "multiple_objects", "scene", "appearance_style", "color",
                       "spatial_relationship")

_CLIP_B32 = ("clip_model/ViT-B-32.pt", "https://openaipublic.azureedge.net/clip/models/"
             "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt")
_GRIT = ("grit_model/grit_b_densecap_objectdet.pth",
         "https://datarelease.blob.core.windows.net/grit/models/grit_b_densecap_objectdet.pth")
_VICLIP = [("ViCLIP/ViClip-InternVid-10M-FLT.pth",
            "https://huggingface.co/OpenGVLab/VBench_Used_Models/resolve/main/ViClip-InternVid-10M-FLT.pth"),
           ("ViCLIP/bpe_simple_vocab_16e6.txt.gz",
            "https://raw.githubusercontent.com/openai/CLIP/main/clip/bpe_simple_vocab_16e6.txt.gz")]
_BERT = "the `bert-base-uncased` tokenizer from the Hugging Face hub"

# Files VBench 0.1.5 loads per dimension in local mode (vbench/utils.py::init_submodules and the dimension modules),
# relative to VBENCH_CACHE_DIR, with where VBench downloads them from.
DIMENSION_WEIGHTS: dict[str, list[tuple[str, str]]] = {
    "subject_consistency": [
        ("dino_model/facebookresearch_dino_main", "git clone https://github.com/facebookresearch/dino"),
        ("dino_model/dino_vitbase16_pretrain.pth",
         "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth")],
    "background_consistency": [_CLIP_B32],
    "aesthetic_quality": [
        ("clip_model/ViT-L-14.pt", "https://openaipublic.azureedge.net/clip/models/"
         "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt"),
        ("aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth",
         "https://github.com/LAION-AI/aesthetic-predictor/blob/main/sa_0_4_vit_l_14_linear.pth?raw=true")],
    "imaging_quality": [("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth", "https://github.com/chaofengc/IQA-PyTorch/"
                         "releases/download/v0.1-weights/musiq_spaq_ckpt-358bb6af.pth")],
    "object_class": [_GRIT],
    "multiple_objects": [_GRIT],
    "color": [_GRIT],
    "spatial_relationship": [_GRIT],
    "scene": [("caption_model/tag2text_swin_14m.pth", "https://huggingface.co/spaces/xinyu1205/"
               "recognize-anything/resolve/main/tag2text_swin_14m.pth")],
    "temporal_style": _VICLIP,
    "overall_consistency": _VICLIP,
    "human_action": [("umt_model/l16_ptk710_ftk710_ftk400_f16_res224.pth", "https://huggingface.co/OpenGVLab/"
                      "VBench_Used_Models/resolve/main/l16_ptk710_ftk710_ftk400_f16_res224.pth")],
    "temporal_flickering": [],
    "motion_smoothness": [("amt_model/amt-s.pth", "https://huggingface.co/lalala125/AMT/resolve/main/amt-s.pth")],
    "dynamic_degree": [("raft_model/models/raft-things.pth",
                        "https://dl.dropboxusercontent.com/s/4j4z58wuv8o0mfz/models.zip (unzipped)")],
    "appearance_style": [_CLIP_B32],
}
# Needs beyond weight files (and beyond a torchvision that imports, which every dimension but flickering needs).
DIMENSION_EXTRA_NEEDS: dict[str, str] = {
    **{d: f"detectron2 (not on PyPI) and {_BERT}" for d in ("object_class", "multiple_objects", "color",
                                                            "spatial_relationship")},
    "scene": _BERT,
}

# What `--setup-venv` installs. torch==2.13.0 first and alone, so pip takes the local CPU wheel and nothing pulls a
# CUDA build; vbench without its pins; then the modules `import vbench` and temporal_flickering need.
SETUP_STEPS: tuple[tuple[str, ...], ...] = (
    ("torch==2.13.0",),
    ("--no-deps", f"vbench=={VBENCH_VERSION}"),
    ("decord", "opencv-python-headless", "tqdm", "pillow", "numpy", "torch==2.13.0"),
)


def validate_dimensions(dimensions: Iterable[str] | None) -> list[str]:
    """The requested dimensions in VBench's order; raises ``ValueError`` naming the unknown ones."""
    if dimensions is None:
        return list(ALL_DIMENSIONS)
    dims = list(dict.fromkeys(dimensions))
    unknown = [d for d in dims if d not in ALL_DIMENSIONS]
    if unknown:
        raise ValueError(f"Unknown VBench dimension(s) {unknown}. Valid: {', '.join(ALL_DIMENSIONS)}.")
    if not dims:
        raise ValueError("--dimensions is empty; name at least one VBench dimension, e.g. temporal_flickering.")
    return [d for d in ALL_DIMENSIONS if d in dims]


def vbench_cache_dir() -> str:
    """Where VBench looks for weights: ``$VBENCH_CACHE_DIR`` or ``~/.cache/vbench`` (as vbench/utils.py does)."""
    return os.environ.get("VBENCH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "vbench")


def missing_weights(dimension: str, cache_dir: str | None = None) -> list[tuple[str, str]]:
    """``(path, source)`` of every weight file ``dimension`` needs that is not in ``cache_dir``."""
    cache_dir = cache_dir or vbench_cache_dir()
    return [(os.path.join(cache_dir, rel), src) for rel, src in DIMENSION_WEIGHTS[dimension]
            if not os.path.exists(os.path.join(cache_dir, rel))]


def _weights_text(items: list[tuple[str, str]]) -> str:
    return "; ".join(f"{os.path.basename(path)} from {src}" for path, src in items)


# ------------------------------------------------------------------------------------------------------------ venv
def venv_python(venv_dir: str) -> str:
    """The interpreter of a VBench venv; raises ``FileNotFoundError`` with the fix when it is not one."""
    python = os.path.join(os.path.abspath(venv_dir), "bin", "python")
    if not os.path.isfile(python):
        raise FileNotFoundError(f"{venv_dir!r} is not a virtual environment (no bin/python). Create one with "
                                f"`vdit-accel vbench --setup-venv {venv_dir} ...`.")
    return python


def setup_venv(venv_dir: str, base_python: str | None = None, log=print) -> str:
    """Create (or complete) a VBench venv at ``venv_dir``; returns its interpreter.

    Runs ``python -m venv`` then ``pip install`` for each of :data:`SETUP_STEPS`. Needs PyPI (or a local index);
    pip's error is raised as ``RuntimeError`` with the command that failed.
    """
    venv_dir = os.path.abspath(venv_dir)
    python = os.path.join(venv_dir, "bin", "python")
    if not os.path.isfile(python):
        log(f"[vbench] creating virtual environment {venv_dir}")
        _check_call([base_python or sys.executable, "-m", "venv", venv_dir])
    for step in SETUP_STEPS:
        log(f"[vbench] pip install {' '.join(step)}")
        _check_call([python, "-m", "pip", "install", "-q", *step])
    info = probe_venv(python)
    log(f"[vbench] VBench {info['vbench_version']} ready in {venv_dir}"
        + ("" if info["torchvision_ok"] else " (torchvision unusable there: only temporal_flickering can run)"))
    return python


def _check_call(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n" + "\n".join(tail))


_PROBE = r"""
import json, os, sys
out = {}
try:
    import torchvision, torchvision.transforms  # noqa: F401
    out["torchvision_ok"], out["torchvision_error"] = True, None
except Exception as e:  # PyPI's CUDA torchvision against CPU torch: "operator torchvision::nms does not exist"
    out["torchvision_ok"], out["torchvision_error"] = False, f"{type(e).__name__}: {e}"
from importlib.metadata import version
out["vbench_version"] = version("vbench")
import importlib.util
spec = importlib.util.find_spec("vbench")
out["full_info"] = os.path.join(os.path.dirname(spec.origin), "VBench_full_info.json")
print("VDIT_PROBE " + json.dumps(out))
"""


def probe_venv(python: str) -> dict[str, Any]:
    """VBench version, path of ``VBench_full_info.json`` and whether torchvision imports, in the venv."""
    proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("VDIT_PROBE ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"VBench is not usable with {python}: {(proc.stderr or proc.stdout).strip()[-800:]}. "
                           f"Re-create the environment with `vdit-accel vbench --setup-venv DIR`.")
    return json.loads(line[len("VDIT_PROBE "):])


def standard_prompts(full_info_path: str, dimensions: Iterable[str]) -> list[str]:
    """Prompts of VBench's standard suite (``VBench_full_info.json``) used by any of ``dimensions``, in file order."""
    with open(full_info_path) as f:
        info = json.load(f)
    dims = set(dimensions)
    return [e["prompt_en"] for e in info if dims & set(e["dimension"])]


# ------------------------------------------------------------------------------------------------------ evaluation
_EVAL_SCRIPT = r'''
"""Written by vdit_accel.quality.vbench_runner; runs in the VBench venv: one VBench.evaluate per dimension."""
import json, os, sys, traceback, types

args = json.load(open(sys.argv[1]))
tv_error = None
try:
    import torchvision, torchvision.transforms  # noqa: F401
except Exception as e:
    tv_error = f"{type(e).__name__}: {e}"
    for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[k]
    # `import vbench` imports torchvision.transforms at module top; temporal_flickering never calls it.
    tv, tr = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")

    class _Stub:
        def __init__(self, *a, **k):
            raise RuntimeError("torchvision is stubbed (it does not import in this venv)")

    for n in ["Compose", "Resize", "CenterCrop", "ToTensor", "Normalize", "ToPILImage", "RandomResizedCrop"]:
        setattr(tr, n, _Stub)
    tr.InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic", BILINEAR="bilinear", NEAREST="nearest")
    tv.transforms = tr
    sys.modules["torchvision"], sys.modules["torchvision.transforms"] = tv, tr

import vbench
from vbench import VBench

full_info = os.path.join(os.path.dirname(vbench.__file__), "VBench_full_info.json")
results = {}
for dim in args["dimensions"]:
    if tv_error is not None and dim != "temporal_flickering":
        results[dim] = {"skipped": f"torchvision does not import in the VBench venv ({tv_error})"}
        continue
    name = f"{args['name']}_{dim}"
    try:
        VBench(args["device"], full_info, args["output_path"]).evaluate(
            videos_path=args["videos_path"], name=name, dimension_list=[dim], local=not args["allow_downloads"],
            mode=args["mode"])
        with open(os.path.join(args["output_path"], name + "_eval_results.json")) as f:
            score, per_video = json.load(f)[dim]
        results[dim] = {"score": float(score),
                        "videos": [{"video": os.path.basename(v["video_path"]), "score": v["video_results"]}
                                   for v in per_video if isinstance(v, dict) and "video_path" in v]}
    except BaseException as e:  # one dimension failing must not lose the others
        results[dim] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
with open(args["result_file"], "w") as f:
    json.dump(results, f, indent=1)
'''


def run_vbench(python: str, videos_dir: str, output_dir: str, name: str, dimensions: list[str],
               mode: str = "custom_input", device: str = "cpu", allow_downloads: bool = False,
               timeout: float | None = None) -> dict[str, dict[str, Any]]:
    """Run VBench in the venv of ``python`` on the videos in ``videos_dir``, one ``evaluate`` per dimension.

    Returns ``{dimension: {"score", "videos"} | {"skipped": reason} | {"error": message}}``. VBench's own JSON files
    stay in ``output_dir``.
    """
    if mode not in ("custom_input", "vbench_standard"):
        raise ValueError(f"`mode` must be 'custom_input' or 'vbench_standard', got {mode!r}.")
    os.makedirs(output_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        script, args_file = os.path.join(tmp, "vbench_eval.py"), os.path.join(tmp, "args.json")
        result_file = os.path.join(tmp, "results.json")
        with open(script, "w") as f:
            f.write(_EVAL_SCRIPT)
        with open(args_file, "w") as f:
            json.dump(dict(videos_path=os.path.abspath(videos_dir), output_path=os.path.abspath(output_dir),
                           name=name, dimensions=list(dimensions), mode=mode, device=device,
                           allow_downloads=allow_downloads, result_file=result_file), f)
        env = dict(os.environ, VBENCH_CACHE_DIR=vbench_cache_dir())
        env.pop("PYTHONPATH", None)  # the project's environment must not leak into VBench's
        proc = subprocess.run([python, script, args_file], capture_output=True, text=True, env=env,
                              cwd=output_dir, timeout=timeout)
        if proc.returncode != 0 or not os.path.isfile(result_file):
            raise RuntimeError(f"VBench failed in {python} (exit {proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()[-1500:]}")
        with open(result_file) as f:
            return json.load(f)


def read_video_uint8(path: str):
    """Frames of an mp4 as uint8 ``[F, H, W, 3]`` (imageio-ffmpeg)."""
    import imageio.v2 as imageio
    import numpy as np

    with imageio.get_reader(path, format="ffmpeg") as reader:
        return np.stack([np.asarray(frame) for frame in reader])


def offline_dimension_scores(videos_dir: str, video_names: list[str]) -> dict[str, Any]:
    """``temporal_flickering`` without VBench: :func:`vdit_accel.quality.temporal_flicker` on the decoded mp4s
    (VBench decodes the files too), averaged over videos like VBench's ``avg_score``."""
    from . import temporal_flicker

    per_video = [{"video": n, "score": temporal_flicker(read_video_uint8(os.path.join(videos_dir, n)))}
                 for n in video_names]
    score = sum(v["score"] for v in per_video) / len(per_video)
    return {"score": score, "videos": per_video}


# ----------------------------------------------------------------------------------------------------------- plan
@dataclass
class DimensionPlan:
    dimension: str
    run_with: str | None  # "vbench" | "formula" | None (skipped)
    reason: str | None = None  # why it is skipped


def plan_dimensions(dimensions: list[str], *, vbench_available: bool, standard_suite: bool,
                    torchvision_ok: bool = False, torchvision_error: str | None = None,
                    allow_downloads: bool = False, cache_dir: str | None = None) -> list[DimensionPlan]:
    """Decide, before generating anything, how each dimension runs or why it is skipped."""
    cache_dir = cache_dir or vbench_cache_dir()
    plans = []
    for dim in dimensions:
        if not standard_suite and dim in STANDARD_SUITE_ONLY:
            plans.append(DimensionPlan(dim, None, "needs the auxiliary object/scene/style information of VBench's "
                                                  "standard prompt suite; run with --prompts vbench-standard"))
            continue
        weights = missing_weights(dim, cache_dir)
        needs = DIMENSION_EXTRA_NEEDS.get(dim)
        if not vbench_available:
            if dim in WEIGHT_FREE:
                plans.append(DimensionPlan(dim, "formula"))
                continue
            what = f"weights {_weights_text(weights)}" if weights else "VBench"
            plans.append(DimensionPlan(dim, None, f"VBench is not installed (create its venv with --setup-venv DIR); "
                                                  f"needs {what}" + (f", {needs}" if needs else "")
                                                  + ", and a torchvision that loads"))
            continue
        if dim not in WEIGHT_FREE and not torchvision_ok:
            plans.append(DimensionPlan(dim, None, f"torchvision does not import in the VBench venv "
                                                  f"({torchvision_error}); also needs "
                                                  + (f"weights {_weights_text(weights)}" if weights else
                                                     "its weights (present)")))
            continue
        if weights and not allow_downloads:
            plans.append(DimensionPlan(dim, None, f"model weights missing from VBENCH_CACHE_DIR={cache_dir}: "
                                                  f"{_weights_text(weights)} (nothing is downloaded implicitly; "
                                                  f"--allow-downloads lets VBench fetch them)"))
            continue
        plans.append(DimensionPlan(dim, "vbench"))
    return plans


# ---------------------------------------------------------------------------------------------------------- table
def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if x == x and abs(x) != float("inf") else str(x)
    return str(x)


def write_table(path: str, report: dict[str, Any]) -> str:
    """Markdown table of every dimension (dense, accelerated, difference, how it was computed or why skipped),
    the fidelity of accelerated against dense, and the measured times."""
    lines = [f"# VBench: dense vs accelerated ({report['model']})", "",
             f"Prompts: {report['prompts_source']} ({report['num_prompts']} of {report['num_prompts_available']} "
             f"prompts × "
             f"{report['samples']} samples); "
             f"acceleration: {report['acceleration_label']}; VBench: {report['vbench']['status']}.", "",
             "| dimension | dense | accelerated | accelerated − dense | computed by / skipped because |",
             "|---|---|---|---|---|"]
    for dim, d in report["dimensions"].items():
        if d["status"] == "ran":
            delta = d["accelerated"] - d["dense"]
            lines.append(f"| {dim} | {_fmt(d['dense'], 5)} | {_fmt(d['accelerated'], 5)} | {delta:+.5f} | "
                         f"{d['source']} |")
        else:
            lines.append(f"| {dim} | — | — | — | {d['status']}: {d['reason']} |")
    fid = report["fidelity"]
    lines += ["", "Accelerated against dense (same prompt and seed), mean over videos:", "",
              "| metric | value |", "|---|---|",
              f"| PSNR (dB) | {_fmt(fid['psnr'], 2)} |", f"| SSIM | {_fmt(fid['ssim'])} |",
              "| LPIPS | " + (_fmt(fid["lpips"]) if fid["lpips"] is not None
                               else f"not computed: {fid['lpips_unavailable_reason']}") + " |"]
    t = report["timing"]
    lines += ["", f"Generation time (measured, one run per video, same process): dense {t['dense_seconds']:.2f} s, "
              f"accelerated {t['accelerated_seconds']:.2f} s, ratio {t['speedup']:.2f}×.", ""]
    text = "\n".join(lines)
    with open(path, "w") as f:
        f.write(text)
    return text
