"""Run diffusers' own pipeline tests for every supported family with vdit-accel forced on, and tabulate the results.

    OMP_NUM_THREADS=1 python benchmarks/compat_suite.py /path/to/diffusers-checkout \
        --families wan --modes off budget1 --out benchmarks/results/compat_wan.md

Takes a diffusers *source checkout* (``git clone --branch v<installed version>``: the PyPI source distribution has no
pipeline tests; no upstream test code is copied into this repository). Its ``tests/`` folder is copied to a work
folder and run against the *installed* diffusers (the checkout's ``conftest.py`` would otherwise put its own
``src/`` first on ``sys.path``). The hub-hosted tiny text encoders, tokenizers and image encoders the tests load
(``hf-internal-testing/tiny-random-t5`` ...) are replaced by offline stand-ins saved under the work folder, which is
the tests' working directory: ``from_pretrained("<org>/<name>")`` finds a local folder of that name first.
The stand-ins have other weights and vocabularies than the hub repos, so tests that compare against hard-coded
expected slices fail *with or without* acceleration.

Each family runs once per mode (``compat_plugin.py``: ``off`` is the baseline, ``budget1``, ``default``,
``speedup2``). A failure is classified as

- **offline stand-in**: it fails the same way in the baseline (``off``), or needs the hub;
- **by design**: vdit-accel refuses to compose with a diffusers cache (``enable_cache``), or refuses ``speedup=2``
  on the tests' 2-step runs as unreachable, with a clear error;
- **approximation** (mode ``half`` only): a numeric comparison fails because budget 0.5 changes the output;
- **defect**: anything else (it passes without acceleration and fails with it).

diffusers' test dependencies ``parameterized`` and ``requests-mock`` must be importable; without ``ftfy`` the
plugin gives the pipelines an identity ``ftfy.fix_text``. The full set takes about 25 minutes per mode on 2 CPU
cores; ``--families`` / ``-k`` run a subset. Results of a run: ``benchmarks/results/compat_all_families.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# diffusers' pipeline test files per supported family (paths under tests/pipelines; missing files are skipped)
FAMILY_TESTS = {
    "wan": ["wan/test_wan.py", "wan/test_wan_22.py", "wan/test_wan_image_to_video.py",
            "wan/test_wan_22_image_to_video.py", "wan/test_wan_video_to_video.py"],
    "wan_vace": ["wan/test_wan_vace.py"],
    "wan_animate": ["wan/test_wan_animate.py"],
    "chronoedit": ["chronoedit/test_chronoedit.py"],
    "skyreels_v2": ["skyreels_v2"],
    "cogvideox": ["cogvideo"],
    "hunyuan_video": ["hunyuan_video/test_hunyuan_video.py", "hunyuan_video/test_hunyuan_image2video.py",
                      "hunyuan_video/test_hunyuan_skyreels_image2video.py"],
    "hunyuan_video_framepack": ["hunyuan_video/test_hunyuan_video_framepack.py"],
    "ltx": ["ltx/test_ltx.py", "ltx/test_ltx_condition.py", "ltx/test_ltx_image2video.py"],
    "mochi": ["mochi"],
}
TEST_DEPENDENCIES = {"parameterized": "parameterized", "requests_mock": "requests-mock"}  # module: PyPI name
MODES = ("off", "budget1", "default", "speedup2", "half")
_BY_DESIGN = ("diffusers cache", "enable_cache", "do not compose", "disable_cache()",  # cache composition
              "is not reachable in")  # speedup=2 asked of a 2-step run: refused, naming the reachable speedup
_OFFLINE = ("huggingface.co", "LocalEntryNotFoundError", "OfflineModeIsEnabled", "We couldn't connect",
            "is not a local folder", "Can't load", "offline")


# ------------------------------------------------------------------------------------------------- stand-ins
def build_standins(root: str) -> None:
    """Save offline stand-ins of the hub repos the video pipeline tests load, as ``root/<org>/<name>`` folders."""
    import torch
    from transformers import (CLIPTextConfig, SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel,
                              T5Config, T5EncoderModel)

    from vdit_accel.testing import WORDS, build_offline_t5_tokenizer
    from vdit_accel.tiny_model.tokenizer import build_word_level_tokenizer

    t5 = os.path.join(root, "hf-internal-testing", "tiny-random-t5")
    if not os.path.isdir(t5):
        # The hub repo's shapes (d_model 32, d_kv 8, d_ff 37, 4 heads, 8 buckets); a word-level vocabulary.
        tokenizer = build_offline_t5_tokenizer()
        torch.manual_seed(0)
        T5EncoderModel(T5Config(vocab_size=1000, d_model=32, d_kv=8, d_ff=37, num_layers=5, num_heads=4,
                                relative_attention_num_buckets=8, dropout_rate=0.0)).save_pretrained(t5)
        tokenizer.save_pretrained(t5)
    clip = os.path.join(root, "hf-internal-testing", "tiny-random-clip")
    if not os.path.isdir(clip):
        tok = build_word_level_tokenizer(WORDS, model_max_length=77)
        tok.save_pretrained(clip)
        CLIPTextConfig(vocab_size=1000, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                       num_hidden_layers=5, bos_token_id=0, eos_token_id=2, pad_token_id=0).save_pretrained(clip)
    llama = os.path.join(root, "finetrainers", "dummy-hunyaunvideo", "tokenizer")
    if not os.path.isdir(llama):
        build_word_level_tokenizer(WORDS, model_max_length=256).save_pretrained(llama)
    siglip = os.path.join(root, "hf-internal-testing", "tiny-random-SiglipVisionModel")
    if not os.path.isdir(siglip):
        torch.manual_seed(0)
        SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                             num_hidden_layers=2, image_size=30, patch_size=2)).save_pretrained(siglip)
        SiglipImageProcessorPil(size={"height": 30, "width": 30}).save_pretrained(siglip)


# ------------------------------------------------------------------------------------------------- running
def run_family(work: str, family: str, mode: str, timeout: int, keyword: str | None) -> dict:
    paths = [os.path.join(work, "tests", "pipelines", p) for p in FAMILY_TESTS[family]]
    paths = [p for p in paths if os.path.exists(p)]
    if not paths:
        return {"family": family, "mode": mode, "cases": {}, "note": "no test files in this checkout"}
    xml = os.path.join(work, f"junit_{family}_{mode}.xml")
    log = os.path.join(work, f"log_{family}_{mode}.jsonl")
    for f in (xml, log):
        if os.path.exists(f):
            os.remove(f)
    env = dict(os.environ, VDIT_COMPAT_MODE=mode, VDIT_COMPAT_LOG=log, HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONPATH=os.pathsep.join([HERE, ROOT, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", "-p", "compat_plugin", "-q", "-p", "no:cacheprovider",
           f"--junitxml={xml}", "--rootdir", os.path.join(work, "tests"), *paths]
    if keyword:
        cmd += ["-k", keyword]
    start = time.time()
    try:
        subprocess.run(cmd, cwd=work, env=env, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        note = ""
    except subprocess.TimeoutExpired:
        note = f"timed out after {timeout} s"
    cases = parse_junit(xml) if os.path.exists(xml) else {}
    accelerated = 0
    if os.path.exists(log):
        with open(log) as f:
            accelerated = sum(1 for line in f if json.loads(line).get("accelerated"))
    return {"family": family, "mode": mode, "cases": cases, "seconds": round(time.time() - start, 1),
            "accelerated_pipelines": accelerated, "note": note}


def parse_junit(path: str) -> dict[str, dict]:
    cases = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        status, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                status, message = "failed", (child.get("message") or child.text or "")[:400]
            elif child.tag == "skipped":
                status, message = "skipped", (child.get("message") or "")[:200]
        cases[name] = {"status": status, "message": message}
    return cases


def classify(message: str, baseline: dict | None, mode: str) -> str:
    if any(s in message for s in _BY_DESIGN):
        return "by design"
    if baseline is not None and baseline.get("status") != "passed":
        return "offline stand-in"
    if any(s in message for s in _OFFLINE):
        return "offline stand-in"
    if mode == "half" and message.startswith("AssertionError") and ("close" in message or "diff" in message):
        return "approximation"  # budget 0.5 changes the numbers; a crash would still be a defect
    return "defect"


# ------------------------------------------------------------------------------------------------- report
def write_table(results: list[dict], out: str, header: str) -> None:
    base = {r["family"]: r["cases"] for r in results if r["mode"] == "off"}
    lines = [header, "", "| family | mode | passed | failed | skipped | offline stand-in | by design | approximation | "
             "defect | accelerated pipeline calls | time (s) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    details = []
    for r in results:
        cases = r["cases"]
        counts = r.get("counts") or {k: sum(1 for c in cases.values() if c["status"] == k)
                                     for k in ("passed", "failed", "skipped")}
        kinds = {"offline stand-in": 0, "by design": 0, "approximation": 0, "defect": 0}
        for name, c in sorted(cases.items()):
            if c["status"] != "failed":
                continue
            kind = ("baseline" if r["mode"] == "off"
                    else classify(c["message"], base.get(r["family"], {}).get(name), r["mode"]))
            if kind != "baseline":
                kinds[kind] += 1
                message = " ".join(c["message"].split())[:160].replace("|", "/")
                details.append(f"| {r['family']} | {r['mode']} | `{name.split('.')[-1]}` | {kind} | {message} |")
        shown = (lambda k: "-" if r["mode"] == "off" else kinds[k])
        lines.append(f"| {r['family']} | {r['mode']} | {counts['passed']} | {counts['failed']} | {counts['skipped']} "
                     f"| {shown('offline stand-in')} | {shown('by design')} | {shown('approximation')} | "
                     f"{shown('defect')} | "
                     f"{r.get('accelerated_pipelines', 0)} | {r.get('seconds', '')} {r.get('note', '')} |")
    lines += ["", "Mode `off` is the baseline (acceleration never enabled): its failures are the offline stand-ins' "
              "(other weights and vocabularies than the hub repos, so hard-coded expected slices differ) or the "
              "checkout's differences from the installed diffusers.", ""]
    if details:
        lines += ["## Failures with acceleration", "", "| family | mode | test | class | message |",
                  "|---|---|---|---|---|", *details, ""]
    with open(out, "w") as f:
        f.write("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkout", help="diffusers source checkout (its tests/ folder is used)")
    p.add_argument("--families", nargs="+", default=list(FAMILY_TESTS), choices=list(FAMILY_TESTS))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("-k", dest="keyword", default=None, help="pytest -k expression (run a subset of the tests)")
    p.add_argument("--work", default=None, help="work folder (default: a temporary folder)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per family and mode")
    p.add_argument("--out", default=os.path.join(HERE, "results", "compat.md"))
    p.add_argument("--from-json", default=None, help="only rewrite --out from the results JSON of an earlier run")
    p.add_argument("--reuse-baseline", action="store_true",
                   help="reuse the `off` results already in --work (same checkout, -k and installed packages)")
    args = p.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            data = json.load(f)
        if isinstance(data, list):  # results only (older runs)
            data = {"results": data, "header": "# diffusers pipeline tests with vdit-accel forced on"}
        write_table(data["results"], args.out, data["header"])
        return 0
    tests = os.path.join(args.checkout, "tests")
    if not os.path.isdir(os.path.join(tests, "pipelines")):
        p.error(f"{args.checkout} is not a diffusers source checkout (no tests/pipelines); `git clone` the tag of "
                f"the installed diffusers.")
    missing = [m for m in TEST_DEPENDENCIES
               if subprocess.run([sys.executable, "-c", f"import {m}"], capture_output=True).returncode]
    if missing:
        names = " ".join(TEST_DEPENDENCIES[m] for m in missing)
        p.error(f"diffusers' pipeline tests import {', '.join(missing)} (diffusers test dependencies): `pip install "
                f"{names}`, or `pip install --target DIR {names}` and put DIR on PYTHONPATH.")
    if "off" not in args.modes:
        args.modes = ["off", *args.modes]  # the baseline classifies the failures
    work = args.work or tempfile.mkdtemp(prefix="vdit_compat_")
    if not os.path.isdir(os.path.join(work, "tests")):
        shutil.copytree(tests, os.path.join(work, "tests"))
    build_standins(work)
    results = []
    for family in args.families:
        for mode in args.modes:
            baseline = os.path.join(work, f"junit_{family}_off.xml")
            if mode == "off" and args.reuse_baseline and os.path.exists(baseline):
                r = {"family": family, "mode": mode, "cases": parse_junit(baseline), "note": "(reused)"}
            else:
                r = run_family(work, family, mode, args.timeout, args.keyword)
            print(f"{family:24s} {mode:9s} " + " ".join(
                f"{k}={sum(1 for c in r['cases'].values() if c['status'] == k)}"
                for k in ("passed", "failed", "skipped")) + f" {r.get('seconds', '')}s {r.get('note', '')}",
                flush=True)
            results.append(r)
    import diffusers

    header = (f"# diffusers pipeline tests with vdit-accel forced on\n\ndiffusers {diffusers.__version__} "
              f"(installed); tests from `{os.path.abspath(args.checkout)}`; families {', '.join(args.families)}; "
              f"modes {', '.join(args.modes)}" + (f"; `-k {args.keyword}`" if args.keyword else "") + ".\n\n"
              f"Command: `python benchmarks/compat_suite.py {' '.join(argv if argv is not None else sys.argv[1:])}`")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_table(results, args.out, header)
    for r in results:  # the JSON keeps the counts and the failures (enough to rewrite the table)
        r["counts"] = {k: sum(1 for c in r["cases"].values() if c["status"] == k)
                       for k in ("passed", "failed", "skipped")}
        r["cases"] = {name: c for name, c in r["cases"].items() if c["status"] == "failed"}
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"header": header, "results": results}, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
