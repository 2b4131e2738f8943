"""Turn results directories into the paper's tables (LaTeX) — every number in paper/ comes from a run on disk.

    python -m analysis.paper_assets --bench runs/bench/<time> [--calibration runs/calibrate/<time>] [--out paper/generated]

Writes ``model.tex`` (the shipped model's card figures), ``bench.tex`` (tokens/s, TPF, speedup of every lossless
policy and transformers baselines, with the cost curve in the caption) and, if given, ``calibration.tex``.
Each table's caption names the command and the results directory it was made from.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from specpolicy.models.loading import ASSET_DIR


def _esc(s: str) -> str:
    return s.replace("_", r"\_")


def model_table(card: dict) -> str:
    ev = card["evaluation"]
    rows = [f"{j} & {d['agreement']:.3f} & {d['conditional_acceptance']:.3f} & {d['chain_acceptance']:.3f} & "
            f"{d['auroc']:.3f} \\\\" for j, d in ev["depths"].items()]
    return "\n".join([
        r"\begin{table}[t]\centering\small",
        r"\begin{tabular}{rrrrr}\toprule",
        r"depth $j$ & agreement & $P(\text{acc}_j\mid\text{acc}_{<j})$ & chain & AUROC of $q(d_j)$ \\\midrule",
        *rows,
        r"\bottomrule\end{tabular}",
        rf"\caption{{Embedded model, test split: next-token top-1 {ev['next_token']['top1']:.3f}; greedy generations "
        rf"that loop {ev['loop_share']:.2f}. From \texttt{{python -m experiments.evaluate\_model}}.}}",
        r"\label{tab:model}\end{table}", ""])


def bench_table(bench: dict, src: str) -> str:
    rows = []
    for name, r in bench["rows"].items():
        tpf = f"{r['tpf']:.2f}" if r.get("tpf") else "--"
        rows.append(f"{_esc(name)} & {r['tokens_per_s']:.1f} & {r['speedup_vs_ar']:.2f}$\\times$ & {tpf} \\\\")
    c = bench["cost"]
    curve = ", ".join(f"c({m})={v:.2f}" for m, v in list(c["c"].items())[:6])
    return "\n".join([
        r"\begin{table}[t]\centering\small",
        r"\begin{tabular}{lrrr}\toprule",
        r"decoder & tokens/s & speedup vs AR & TPF \\\midrule",
        *rows,
        r"\bottomrule\end{tabular}",
        rf"\caption{{Greedy decoding, {bench['n_prompts']} held-out prompts $\times$ {bench['new_tokens']} tokens, "
        rf"{bench['threads']} threads, median of {bench['repeats']} interleaved repeats ({_esc(bench['cpu'])}). "
        rf"Cost curve {curve}; one MTP step costs {c['mtp_step_rel']:.2f} target forwards. "
        rf"From \texttt{{python -m experiments.bench}} ({_esc(src)}).}}",
        r"\label{tab:bench}\end{table}", ""])


def calibration_table(report: dict, src: str) -> str:
    rows = []
    for r in report.get("table", []):
        rows.append(" & ".join(str(r[k]) for k in ("depth", "n", "ece_raw", "ece_cal", "auroc")) + r" \\")
    return "\n".join([r"\begin{table}[t]\centering\small", r"\begin{tabular}{rrrrr}\toprule",
                      r"depth & $n$ & ECE raw & ECE calibrated & AUROC \\\midrule", *rows,
                      r"\bottomrule\end{tabular}",
                      rf"\caption{{Calibration of $q(d_j)$. From \texttt{{python -m experiments.calibrate}} ({_esc(src)}).}}",
                      r"\label{tab:calibration}\end{table}", ""])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", help="a results directory of experiments.bench (bench.json)")
    ap.add_argument("--calibration", help="a results directory of experiments.calibrate (report.json)")
    ap.add_argument("--out", default="paper/generated")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.tex").write_text(model_table(json.loads((ASSET_DIR / "tiny" / "model_card.json").read_text())))
    if a.bench:
        f = Path(a.bench) / "bench.json"
        if not f.exists():
            print(f"paper_assets: {f} not found; allowed: a directory written by experiments.bench", file=sys.stderr)
            return 2
        (out / "bench.tex").write_text(bench_table(json.loads(f.read_text()), a.bench))
    if a.calibration:
        f = Path(a.calibration) / "report.json"
        if not f.exists():
            print(f"paper_assets: {f} not found; allowed: a directory written by experiments.calibrate", file=sys.stderr)
            return 2
        (out / "calibration.tex").write_text(calibration_table(json.loads(f.read_text()), a.calibration))
    print(f"tables written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
