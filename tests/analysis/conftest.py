"""Small synthetic results directories, written with the library's own writers (``metrics.summarise_run``, the
steps.parquet schema, calibrators' ``to_dict``), so a change of a results format breaks these tests.

``results_root`` (session): runs/ (4 experiments.run directories: mtp greedy lossless, two lossy threshold settings,
medusa), calibrate/, tune/, replay/, bench/ under one tmp folder. No model is run.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.results import QUALITY
from specpolicy.calibration import get_calibrator
from specpolicy.metrics import acceptance_counts, summarise_run
from specpolicy.runs.steps import SCHEMA

N_PROMPTS, NEW = 6, 24
P_ACCEPT = (0.8, 0.7, 0.6, 0.5, 0.5, 0.5)  # conditional acceptance per depth of the synthetic drafter


def _decode(rng, k: int, tau_trust: float, prompt: int, base: list[int]):
    """One synthetic generation: steps of k drafts, strict verdicts with P_ACCEPT, trusted drafts when q >= tau."""
    steps, tokens, lossy, rejects, diverged = [], [], 0, 0, False
    while len(tokens) < NEW:
        conf = rng.uniform(0.3, 1.0, size=k)
        verdicts, trusted = [], []
        for j in range(k):
            ok = bool(rng.random() < P_ACCEPT[j] * (0.5 + 0.5 * conf[j]))
            trust = bool(conf[j] >= tau_trust)
            verdicts.append(ok)
            trusted.append(trust)
            if not ok and not trust:
                break
        accepted = sum(1 for v, t in zip(verdicts, trusted) if v or t)
        lossy += sum(trusted[: len(verdicts)])
        rejects += sum(1 for v, t in zip(verdicts, trusted) if t and not v)
        diverged |= any(t and not v for v, t in zip(verdicts, trusted))
        n = min(accepted + 1, NEW - len(tokens))
        tokens += [int(x) for x in rng.integers(0, 50, size=n)] if diverged else base[len(tokens):len(tokens) + n]
        steps.append({"step": len(steps), "position": len(tokens), "drafts": [int(x) for x in rng.integers(0, 50, k)],
                      "confidence": conf.tolist(), "entropy": (1 - conf).tolist(), "margin": conf.tolist(),
                      "action": "verify", "trusted": trusted, "verdicts": verdicts, "accept_prob": conf.tolist(),
                      "accepted": accepted, "committed": tokens[-n:], "provenance": ["verified"] * n,
                      "target_tokens": tokens[-n:], "draft_s": 0.001 * k, "verify_s": 0.01})
    return tokens, steps, lossy, rejects


def _run(root, name: str, drafter: str, arms: dict, extra: dict | None = None, seed: int = 0, old: bool = False) -> None:
    """An experiments.run directory: records.jsonl, steps.parquet, summary.json, config.yaml. ``old``: a summary
    without the lossy-quality figures (as written before they existed)."""
    d = root / name
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    records, rows = [], []
    bases = [[int(x) for x in rng.integers(0, 50, NEW)] for _ in range(N_PROMPTS)]
    for label, (pname, params) in arms.items():
        for i in range(N_PROMPTS):
            if pname == "ar":
                tokens, steps, lossy, rejects = bases[i], [], 0, 0
                steps = [{"step": t, "position": t, "drafts": [], "confidence": [], "entropy": [], "margin": [],
                          "action": "verify", "trusted": [], "verdicts": [], "accept_prob": [], "accepted": 0,
                          "committed": [tokens[t]], "provenance": ["target"], "target_tokens": [tokens[t]],
                          "draft_s": 0.0, "verify_s": 0.01} for t in range(NEW)]
            else:
                tokens, steps, lossy, rejects = _decode(rng, params.get("k", params.get("k_max", 4)),
                                                        params.get("tau_trust", 1.01), i, bases[i])
            reached, ok = acceptance_counts([s["verdicts"] for s in steps])
            drafted = sum(len(s["drafts"]) for s in steps)
            stats = {"new_tokens": len(tokens), "target_forwards": len(steps), "steps": len(steps),
                     "drafted": drafted, "lossy_tokens": lossy, "shadow_rejects": rejects,
                     "wall_s": 0.01 * len(steps) + 0.002 * drafted}
            records.append({"prompt_id": f"p{i}", "policy": label, "name": pname, "params": params,
                            "token_ids": tokens, "stats": stats, "accept_reached": reached, "accept_ok": ok,
                            "nll_sum": float(len(tokens) * (0.4 + 0.1 * rejects)), "nll_tokens": len(tokens)})
            rows += [{"prompt_id": f"p{i}", "policy": label, **s} for s in steps]
    labels = {label: {"name": n, "params": p, "role": "policy", "lossless": p.get("tau_trust", 1.01) > 1 or n == "ar"}
              for label, (n, p) in arms.items()}
    summary = summarise_run(records, reference="ar", n_resamples=50, seed=0, policies=labels)
    for label, fields in (extra or {}).items():
        summary["policies"][label].update(fields)
    for entry in summary["policies"].values() if old else ():
        for keys in (v[1] for k, v in QUALITY.items() if k != "lossy_error_rate"):
            for key in keys:
                entry.pop(key, None)
    (d / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), d / "steps.parquet")
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "config.yaml").write_text(f"drafter:\n  name: {drafter}\n  path: ''\ndecode:\n  temperature: 0.0\n")


def _calibration(root) -> None:
    d = root / "calibrate"
    (d / "calibrators").mkdir(parents=True)
    rng = np.random.default_rng(1)
    n = 400
    depth = rng.integers(1, 4, n)
    conf = rng.uniform(0, 1, n)
    label = (rng.random(n) < conf ** 1.5).astype(float)
    rows = pd.DataFrame({"prompt_id": [f"p{i % 20}" for i in range(n)], "depth": depth, "confidence": conf,
                         "label": label, "split": np.where(np.arange(n) % 2, "evaluation", "calibration")})
    rows.to_parquet(d / "rows.parquet", index=False)
    cal = rows[rows["split"] == "calibration"]
    for name in ("temperature", "isotonic"):
        c = get_calibrator(name).fit(cal["confidence"], cal["label"], cal["depth"].to_numpy(int))
        (d / "calibrators" / f"{name}.json").write_text(json.dumps(c.to_dict()))
    (d / "report.json").write_text(json.dumps({"source": {"drafter": "mtp"}}))


def _tune(root) -> None:
    d = root / "tune"
    d.mkdir()
    rng = np.random.default_rng(2)
    n = 30
    tt, te = rng.uniform(0.5, 1.0, n), rng.uniform(0.1, 0.9, n)
    err = np.clip(1 - tt, 0, None) * 0.1
    tpf = 1.5 + 2 * (1 - te) + 3 * err
    pd.DataFrame({"number": range(n), "state": "COMPLETE", "values_0": tpf / 1.6, "values_1": err,
                  "user_attrs_lossy_error_rate": err, "user_attrs_tpf": tpf, "params_tau_trust": tt,
                  "params_tau_extend": te}).to_csv(d / "trials.csv", index=False)
    pd.DataFrame({"trial": [0, 1], "params": ["{}", "{}"], "prompts": 4, "replay_tpf": tpf[:2], "real_tpf": tpf[:2],
                  "replay_error": err[:2], "real_error": err[:2] * 1.1, "replay_speedup": tpf[:2] / 1.6,
                  "real_speedup_modelled": tpf[:2] / 1.6, "real_speedup_wall": tpf[:2] / 1.7}).to_csv(
        d / "pareto.csv", index=False)
    cost = {"t_target": [0.010, 0.011, 0.012, 0.014], "t_mtp": 0.002}
    (d / "summary.json").write_text(json.dumps({"study": "thr", "mode": "multi", "speed_metric": "speedup",
                                                "evaluator": "replay", "trace": {"cost": cost}}))


def _replay_bench(root) -> None:
    d = root / "replay"
    d.mkdir()
    pd.DataFrame({"policy": ["fixed", 'threshold:{"tau_trust": 0.9}'], "lossless": [True, False], "prompts": 4,
                  "prompts_equal": [4, 2], "exact": [True, False], "approximate": [False, True],
                  "replay_tpf": [2.5, 3.1], "real_tpf": [2.5, 3.0], "replay_error": [0.0, 0.02],
                  "real_error": [0.0, 0.025], "replay_speedup": [1.6, 1.9], "real_speedup_modelled": [1.6, 1.85],
                  "real_speedup_wall": [1.5, 1.7]}).to_csv(d / "replay_report.csv", index=False)
    b = root / "bench"
    b.mkdir()
    (b / "bench.json").write_text(json.dumps({"rows": {"ar": {"tokens_per_s": 100.0, "speedup_vs_ar": 1.0}},
                                              "cost": {"c": {"1": 1.0, "2": 1.08, "3": 1.15, "4": 1.4, "5": 1.5}}}))


def build_results(root) -> None:
    """Every kind of results directory under ``root`` (see the module docstring)."""
    runs = root / "runs"
    base = {"ar": ("ar", {}), "fixed": ("fixed", {"k": 4})}
    _run(runs, "mtp", "mtp", {**base, "threshold": ("threshold", {"tau_trust": 1.0, "tau_extend": 0.5, "k_max": 4})})
    _run(runs, "lossy_a", "mtp", {**base, "threshold": ("threshold", {"tau_trust": 0.7, "tau_extend": 0.3,
                                                                      "k_max": 4})}, seed=1,
         extra={"threshold": {"errors_per_trusted_token": {"value": 0.2, "ci95": [0.1, 0.3]},
                              "nll_delta_vs_ar": {"value": 0.05, "ci95": [0.01, 0.09]}}})
    _run(runs, "lossy_b", "mtp", {**base, "threshold": ("threshold", {"tau_trust": 0.9, "tau_extend": 0.6,
                                                                      "k_max": 4})}, seed=2, old=True)
    _run(runs, "medusa", "medusa", {"ar": ("ar", {}), "fixed": ("fixed", {"k": 3})}, seed=3)
    _calibration(root)
    _tune(root)
    _replay_bench(root)


@pytest.fixture(scope="session")
def results_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    build_results(root)
    return root
