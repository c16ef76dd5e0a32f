"""Write the Markdown page of a `vdit-accel search` run from its report JSON (no numbers typed by hand).

    python benchmarks/search_report.py benchmarks/results/search_tiny_shapes_t2v_report.json \
        --pareto-json /tmp/search/pareto.json --plot docs/search_pareto.png > benchmarks/results/search_tiny_shapes_t2v.md
"""

from __future__ import annotations

import argparse
import json


def _b(budgets) -> str:
    return " ".join(f"{b:g}" for b in budgets)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report")
    ap.add_argument("--pareto-json", default=None, help="pareto.json of the run (nsga2)")
    ap.add_argument("--plot", default="docs/search_pareto.png", help="path of the Pareto plot, from the repo root")
    args = ap.parse_args()
    r = json.load(open(args.report))
    st, m, v = r["stats"], r["machine"], r["versions"]
    saved = 1 - st["transformer_steps"] / st["naive_steps"]
    out = [f"# Budget search on the bundled model (`vdit-accel search`)", "",
           f"Command (search wall-clock {r['search_seconds']:.0f} s + {r['reference_seconds']:.0f} s for the dense "
           f"references, {m['workers']} worker(s), {m['torch_threads']} torch thread(s)):", "", "```",
           r["command"], "```", "",
           f"Machine: {m['platform']}, {m['cpus']} CPUs, device {m['device']}; versions: "
           + ", ".join(f"{k} {val}" for k, val in v.items()) + ".", "",
           "## Search cost", "",
           "| candidates evaluated | generations | prompts x steps per candidate | denoising steps run | "
           "without prefix sharing | saved | search wall-clock |", "|---|---|---|---|---|---|---|",
           f"| {st['candidates']} | {r['generations']} | {len(r['run']['prompts'])} x {r['run']['steps']} | "
           f"{st['transformer_steps']} | {st['naive_steps']} | {saved:.0%} | {r['search_seconds']:.0f} s |", "",
           "A denoising step is one cond + one uncond transformer call.", "",
           "## Result", "",
           f"Searched schedule (`{r['config']['mode']}`, target {r['config']['target_speedup']}x, cost model "
           f"`{r['cost_model']['source']}`), written to the `--out` file:", "", "```", str(r["schedule"]), "```", "",
           f"Predicted speedup {r['predicted_speedup']:.2f}x; training-prompt error (final-latent MSE vs dense) "
           f"{r['error']:.4g}.", ""]
    h = r.get("holdout")
    if h:
        seeds = h["seeds"]
        out += [f"Held-out prompts ({len(h['prompts'])}, seeds {seeds[0]}..{seeds[-1]}, not used by the search):", "",
                "| schedule | predicted speedup | final-latent MSE vs dense |", "|---|---|---|"]
        names = {"searched": "searched", "uniform": "uniform budget, same predicted cost",
                 "default_rule": "default rule (dense first 20 % + last, 0.5)"}
        for k, name in names.items():
            if k in h:
                out.append(f"| {name} | {h[k]['predicted_speedup']:.3f}x | {h[k]['error']:.4g} |")
        if "searched" in h and "uniform" in h:
            ratio = h["uniform"]["error"] / h["searched"]["error"] if h["searched"]["error"] > 0 else float("inf")
            out += ["", f"Searched vs uniform at the same predicted cost: **{ratio:.2f}x lower held-out error**."
                    if ratio > 1 else "The searched schedule does **not** beat the uniform one on the held-out prompts."]
        if "searched" in h and "default_rule" in h:
            d, s_ = h["default_rule"], h["searched"]
            better = s_["error"] < d["error"] and s_["predicted_speedup"] >= d["predicted_speedup"]
            out.append(f"Against the default rule ({d['predicted_speedup']:.2f}x predicted): the searched schedule is "
                       + ("faster and closer to dense." if better else
                          f"{'faster' if s_['predicted_speedup'] > d['predicted_speedup'] else 'slower'} and "
                          f"{'closer to' if s_['error'] < d['error'] else 'further from'} dense."))
        out.append("")
    if args.pareto_json:
        p = json.load(open(args.pareto_json))
        out += ["## Pareto front (NSGA-II)", "", f"![Pareto front](../../{args.plot})", "",
                "| predicted speedup | MSE vs dense | budgets |", "|---|---|---|"]
        for f in sorted(p["front"], key=lambda f: -f["predicted_speedup"]):
            out.append(f"| {f['predicted_speedup']:.2f}x | {f['error']:.3g} | {_b(f['budgets'])} |")
        if p.get("uniform"):
            out += ["", "Uniform schedules at costs along the front, for reference:", "",
                    "| predicted speedup | MSE vs dense |", "|---|---|"]
            for u in p["uniform"]:
                out.append(f"| {u['predicted_speedup']:.2f}x | {u['error']:.3g} |")
        out.append("")
    out += ["Predicted speedups come from the cost model named above; they are computed, not timed."]
    print("\n".join(out))


if __name__ == "__main__":
    main()
