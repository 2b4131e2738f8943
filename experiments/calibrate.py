"""Calibrate drafted-token confidences: fit per-depth maps q(d_j) -> P(accept), measure them, certify a trust threshold.

    python -m experiments.calibrate                                    # decode held-out prompts on the tiny model
    python -m experiments.calibrate source=runs/run/<dir> [policy=fixed]  # rows of a finished run's steps.parquet
    python -m experiments.calibrate install=true                       # ... and ship the fitted calibrators

**Regenerating the shipped calibrators** (after the embedded model's weights change) is exactly one command:

    python -m experiments.calibrate install=true

It decodes ``n_prompts`` prompts of the corpus split ``data_split`` (seed ``data_seed``, not the runner's seed 0) with
``fixed`` k=6, greedy, and writes ``<name>.json`` for identity, temperature, platt and isotonic into
``specpolicy/models/assets/tiny/calibrators/<drafter>/`` (``SHIPPED_DIR``), which ``policy=calibrated
calibrator=<name> policy.drafter=<drafter>`` reads (``drafter=medusa|draft|ngram`` calibrates another drafter:
calibrators belong to one drafter and are refused for another). Each shipped file records its provenance (weights hash,
data, evaluation ECE, trust certificate). About 2-3 minutes on 2 cores for the rows, plus ~1 minute per certified
score and tau.

What it does: one row per judged draft (``specpolicy.calibration.data``); prompts split into a calibration and an
evaluation half (``split_by_prompt``); each calibrator fitted per depth on the calibration half (these fitted maps
are what ``install`` ships: nothing is refitted); raw q and every calibrator measured per depth on the evaluation half
(``calibration_report``: ECE, MCE, Brier, log loss, AUROC with prompt-bootstrap intervals). Then, for each score in
``certify`` (``raw`` and/or calibrator names), the trust certificate of the policy that would be deployed: the
trusting policy (``threshold`` on raw q, or ``calibrated`` with exactly the calibrator file written here) decodes
every evaluation prompt once at each tau of ``taus`` (fixed in advance), and ``certify_trust`` walks the taus from
the largest down (Learn-then-Test, betting p-values over prompts): the certified tau has risk (expected share of wrong
tokens among a prompt's trusted tokens, strict shadow verdict) <= alpha with probability >= 1 - delta over the draw
of the evaluation prompts, for prompts drawn like them with this model, drafter and greedy decoding. The certificate
is written into the calibrator file's provenance (``trust_certificate``), so the shipped file carries it. Rows from a
run directory come without a model, and sampling runs are not what the greedy certification decodes: both skip it.

Writes to Hydra's run directory (``hydra.run.dir=...``): ``report.json``, ``rows.parquet`` (the rows, with their
``split``), ``calibrators/<name>.json``, ``reliability_depth<j>.png``; prints a table per depth and the thresholds.
Bad input (no such run directory or steps.parquet, unknown calibrator, alpha/delta outside (0, 1), ...) is one line
on stderr and exit code 2.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from experiments.common import CONF_DIR, UserError, preflight, run_task
from specpolicy.calibration import (
    CALIBRATORS,
    SHIPPED_DIR,
    CalibrationDataError,
    Calibrator,
    evaluate_calibrators,
    get_calibrator,
    rows_from_run,
)


@dataclass
class CalibrateConfig:
    source: str = "collect"  # "collect": decode prompts now; or a run directory holding steps.parquet
    policy: Any = None  # source=<run dir>: use only this policy label's rows (null: all)
    model: str = "tiny"  # source=collect: "tiny", a checkpoint directory or hub id
    drafter: str = "mtp"  # source=collect: mtp[:int8] | medusa[:<dir>] | draft[:<path>] | ngram (calibrators belong to it)
    n_prompts: int = 128  # source=collect (64 calibrate, 64 evaluate: ECE at depth 1 within ~0.01)
    prompt_tokens: int = 64
    max_new_tokens: int = 128
    k: int = 6  # fixed(k): every depth 1..k gets labels
    temperature: float = 0.0  # 0: greedy; > 0: speculative sampling (soft labels min(1, p/q) are recorded too)
    data_split: str = "test"  # corpus split of the prompts (held out from training)
    data_seed: int = 1  # 1, not the runner's 0: the calibrated policy is evaluated on other prompts
    calibrators: list[str] = field(default_factory=lambda: ["temperature", "platt", "isotonic"])
    soft: bool = False  # fit and measure on soft labels min(1, p/q) (sampling runs) instead of 0/1 verdicts
    cal_frac: float = 0.5  # share of prompts in the calibration split
    split_seed: int = 0
    min_rows: int = 20  # a depth with fewer rows uses the pooled map
    alpha: float = 0.05  # trust: risk of the deployed trusting policy <= alpha ...
    delta: float = 0.1  # ... with probability >= 1 - delta over the certification prompts
    certify: list[str] = field(default_factory=lambda: ["raw", "platt"])  # scores to certify a tau for (raw q or a
    # calibrator name); source=collect only: the trusting policy itself is decoded on the evaluation half
    taus: list[float] = field(default_factory=lambda: [0.95, 0.9, 0.8, 0.7, 0.6])  # candidates, fixed in advance
    certify_tokens: int = 32  # max_new_tokens of the certification runs
    n_boot: int = 200  # prompt-bootstrap resamples for the intervals
    n_bins: int = 15
    threads: int = 1  # one or two is faster by machine and load (README "Speed")
    figures: bool = True
    install: bool = False  # copy the fitted calibrators to SHIPPED_DIR (the embedded model's, greedy only)


ConfigStore.instance().store(name="calibrate_schema", node=CalibrateConfig)
SPLITS = ("test", "valid")


def check(cfg: CalibrateConfig) -> None:
    """Every setting a user can get wrong, as one-line ``UserError``s, before anything is decoded."""
    rules = [
        (0 < cfg.alpha < 1, f"alpha={cfg.alpha} is invalid; allowed: 0 < alpha < 1"),
        (0 < cfg.delta < 1, f"delta={cfg.delta} is invalid; allowed: 0 < delta < 1"),
        (0 < cfg.cal_frac < 1, f"cal_frac={cfg.cal_frac} is invalid; allowed: 0 < cal_frac < 1"),
        (len(cfg.calibrators) > 0, "calibrators is empty; allowed: a list of " + ", ".join(CALIBRATORS)),
        (cfg.n_boot >= 0, f"n_boot={cfg.n_boot} is invalid; allowed: >= 0"),
        (cfg.n_bins >= 1, f"n_bins={cfg.n_bins} is invalid; allowed: >= 1"),
        (cfg.threads >= 1, f"threads={cfg.threads} is invalid; allowed: >= 1"),
        (all(m == "raw" or m in cfg.calibrators for m in cfg.certify),
         f"certify={list(cfg.certify)} is invalid; allowed: raw and names in calibrators ({', '.join(cfg.calibrators)})"),
        (len(cfg.taus) > 0 and all(0 < t < 1 for t in cfg.taus),
         f"taus={list(cfg.taus)} is invalid; allowed: a non-empty list of values in (0, 1)"),
        (cfg.certify_tokens >= 2, f"certify_tokens={cfg.certify_tokens} is invalid; allowed: >= 2"),
    ]
    if cfg.source == "collect":
        rules += [
            (cfg.n_prompts >= 2, f"n_prompts={cfg.n_prompts} is invalid; allowed: >= 2 (split by prompt)"),
            (cfg.k >= 1, f"k={cfg.k} is invalid; allowed: >= 1"),
            (cfg.max_new_tokens >= 2, f"max_new_tokens={cfg.max_new_tokens} is invalid; allowed: >= 2"),
            (cfg.prompt_tokens >= 1, f"prompt_tokens={cfg.prompt_tokens} is invalid; allowed: >= 1"),
            (cfg.temperature >= 0, f"temperature={cfg.temperature} is invalid; allowed: 0 (greedy) or > 0"),
            (cfg.data_split in SPLITS, f"data_split={cfg.data_split} is invalid; allowed: {', '.join(SPLITS)}"),
        ]
    for name in cfg.calibrators:
        try:
            get_calibrator(name)
        except ValueError as err:
            raise UserError(str(err)) from None
    for ok, message in rules:
        if not ok:
            raise UserError(message)
    if cfg.source != "collect" and not (Path(cfg.source) / "steps.parquet").is_file():
        try:
            rows_from_run(cfg.source)  # raises the one-line reason
        except CalibrationDataError as err:
            raise UserError(f"source={cfg.source}: {err}") from None
    from specpolicy.runs.checks import drafter_spec

    drafter_spec(cfg.drafter)
    if cfg.install:
        model, temperature = _source_settings(cfg)
        if model != "tiny" or temperature != 0:
            raise UserError(f"install=true ships calibrators for the embedded model, greedy; this source is "
                            f"model={model}, temperature={temperature}; allowed: install=false (use the run "
                            "directory's calibrators/<name>.json as policy.calibrator=<path>)")


def _source_settings(cfg: CalibrateConfig) -> tuple[str, float]:
    """(model, temperature) the rows come from: this config, or the run directory's config.yaml."""
    if cfg.source == "collect":
        return cfg.model, cfg.temperature
    run_cfg = Path(cfg.source) / "config.yaml"
    if not run_cfg.is_file():
        return "unknown", float("nan")
    c = OmegaConf.load(run_cfg)
    return str(OmegaConf.select(c, "model.path", default="unknown")), float(
        OmegaConf.select(c, "decode.temperature", default=float("nan")))


def load_rows(cfg: CalibrateConfig) -> tuple[pd.DataFrame, dict, Any, list]:
    """The rows, where they come from (model card hash, prompts, collection time), and for ``source=collect`` the
    model and prompts (the certification decodes the trusting policy on some of them; else None, [])."""
    if cfg.source != "collect":
        try:
            rows = rows_from_run(cfg.source, cfg.policy)
        except CalibrationDataError as err:
            raise UserError(f"source={cfg.source}: {err}") from None
        return rows, {"source": str(cfg.source), "policy": cfg.policy}, None, []
    import torch

    from specpolicy.calibration import collect
    from specpolicy.data import load_corpus, sample_prompts
    from specpolicy.models.loading import ModelNotFoundError, load_model

    torch.set_num_threads(cfg.threads)
    try:
        model = load_model(cfg.model, drafter=cfg.drafter)
    except (ModelNotFoundError, OSError) as err:
        raise UserError(f"model={cfg.model} could not be loaded: {str(err).splitlines()[0]}") from None
    corpus = load_corpus()
    try:
        prompts = sample_prompts(corpus, model.tokenizer, cfg.n_prompts, cfg.prompt_tokens, cfg.data_seed,
                                 cfg.data_split)
    except ValueError as err:
        raise UserError(str(err)) from None
    t0 = time.perf_counter()
    rows = collect(model, prompts, "fixed", k=cfg.k, max_new_tokens=cfg.max_new_tokens,
                   temperature=cfg.temperature, progress=True)
    info = {"source": "collect", "model": cfg.model, "drafter": model.drafter_label,
            "dtype": str(model.dtype).removeprefix("torch."),
            "weights_sha256": model.card.get("weights_sha256"),
            "corpus_fingerprint": corpus.fingerprint(), "data_split": cfg.data_split, "data_seed": cfg.data_seed,
            "policy": f"fixed(k={cfg.k})", "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
            "threads": cfg.threads, "collect_s": round(time.perf_counter() - t0, 1)}
    return rows, info, model, prompts


def certify_deployed(cfg: CalibrateConfig, run_dir: Path, model, prompts: list, ev_ids: set) -> dict:
    """For each score of ``cfg.certify``: decode the trusting policy that would be deployed (``threshold`` on raw q,
    or ``calibrated`` with the calibrator file written to ``run_dir``, the one ``install`` ships) at every tau of
    ``cfg.taus`` on the evaluation prompts (never fitted on) and certify a tau on those runs
    (``certify_trust``). Records are kept in ``run_dir/certify/<score>/`` (resumable)."""
    from specpolicy.calibration import certify_trust, trust_arms, trust_plan, trust_table
    from specpolicy.runs.runner import decode_run, open_store

    cert_prompts = [p for p in prompts if p.id in ev_ids]
    out = {}
    for method in cfg.certify:
        path = None if method == "raw" else str((run_dir / "calibrators" / f"{method}.json").resolve())
        arms = trust_arms(cfg.taus, calibrator=path, drafter=_drafter_of(cfg))
        plan = trust_plan(arms, cfg.certify_tokens, len(cert_prompts), cfg.data_seed, cfg.prompt_tokens,
                          cfg.data_split, cfg.model, cfg.drafter, cfg.threads)
        store_dir = run_dir / "certify" / method
        store_dir.mkdir(parents=True, exist_ok=True)
        store = open_store(store_dir, plan)
        decode_run(plan, model, cert_prompts, store, progress=True)
        cert = certify_trust(trust_table(store), cfg.alpha, cfg.delta)
        out[method] = {**cert.to_dict(), "calibrator_file": path, "certified_on": "evaluation prompts",
                       "policy": arms[0].name, "max_new_tokens": cfg.certify_tokens}
    return out


def calibrate(cfg: CalibrateConfig, run_dir: Path) -> dict:
    """The whole pipeline; writes the run directory's files and returns the report."""
    check(cfg)
    t_start = time.perf_counter()
    rows, source_info, model, prompts = load_rows(cfg)
    label_col = "soft_label" if cfg.soft else "label"
    if rows.empty or rows["prompt_id"].nunique() < 2:
        raise UserError(f"source={cfg.source} holds {len(rows)} judged drafts from {rows['prompt_id'].nunique()} "
                        "prompts; allowed: drafts from >= 2 prompts (a policy that drafts: not ar)")
    try:
        out = evaluate_calibrators(rows, cfg.calibrators, label_col, cfg.cal_frac, cfg.split_seed, cfg.min_rows,
                                   cfg.n_boot, cfg.n_bins)
    except ValueError as err:
        raise UserError(f"calibration split: {err}") from None
    rows = rows.assign(split=np.where(rows.index.isin(out.cal.index), "calibration", "evaluation"))
    rows.to_parquet(run_dir / "rows.parquet", index=False)
    (run_dir / "calibrators").mkdir(exist_ok=True)
    split_info = out.split_info
    source_info = {**source_info, "drafter": _drafter_of(cfg)}
    for name, c in out.calibrators.items():
        _save(c, run_dir / "calibrators" / f"{name}.json", {**source_info, "split": split_info,
              "fitted_on": "calibration", "label": label_col, "eval_ece_uniform": out.ece["raw" if name == "identity"
                                                                                             else name]})
    if model is not None and cfg.certify and cfg.temperature == 0:
        trust = certify_deployed(cfg, run_dir, model, prompts, set(out.ev["prompt_id"]))
        for cert in trust.values():  # the certificate travels with the (unchanged) map it certifies
            if cert["calibrator_file"] is not None:
                path = Path(cert["calibrator_file"])
                data = json.loads(path.read_text())
                data["provenance"]["trust_certificate"] = cert
                path.write_text(json.dumps(data, indent=1, allow_nan=False, default=str) + "\n")
    else:
        trust = {"skipped": "a trust threshold is certified on runs of the trusting policy itself; rows from a run "
                            "directory come without a model to decode them (use source=collect)"
                 if model is None else "certify=[]" if not cfg.certify else
                 "sampling: the certification runs decode greedily, so they would not cover this policy"}
    report = {
        "rows": len(rows), "prompts": int(rows["prompt_id"].nunique()), "source": source_info, "split": split_info,
        "label": label_col, "ece_eval": out.ece, "calibration_report": out.reports, "trust": trust,
        "config": OmegaConf.to_container(OmegaConf.structured(cfg)),
    }
    if cfg.figures:
        from analysis.reliability import write_reliability_figures

        report["figures"] = [p.name for p in write_reliability_figures(run_dir, n_bins=cfg.n_bins)]
    if cfg.install:
        target_dir = SHIPPED_DIR / _drafter_of(cfg)
        target_dir.mkdir(parents=True, exist_ok=True)
        report["installed"] = [str(shutil.copy2(run_dir / "calibrators" / f"{n}.json", target_dir / f"{n}.json"))
                               for n in out.calibrators]
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return report


def _drafter_of(cfg: CalibrateConfig) -> str:
    """The drafter the rows come from (``drafter_label``: ``mtp-int8`` for ``mtp:int8``): this config's (collect), or
    the run directory's config.yaml."""
    from specpolicy.runs.checks import drafter_label_of

    if cfg.source == "collect":
        return drafter_label_of(cfg.drafter)
    run_cfg = Path(cfg.source) / "config.yaml"
    return drafter_label_of(OmegaConf.select(OmegaConf.load(run_cfg), "drafter")) if run_cfg.is_file() else "mtp"


def _save(cal: Calibrator, path: Path, provenance: dict) -> None:
    """``Calibrator.save`` plus a ``provenance`` entry (``load_calibrator`` ignores unknown keys)."""
    data = {**cal.to_dict(), "drafter": provenance["drafter"], "provenance": provenance}
    path.write_text(json.dumps(data, indent=1, allow_nan=False, default=str) + "\n")


def console_table(report: dict) -> str:
    """Per depth: n (evaluation), acceptance, ECE raw -> each calibrator, AUROC; then the trust thresholds."""
    methods = list(report["calibration_report"])
    by = {m: {r["group"]: r for r in report["calibration_report"][m]} for m in methods}
    head = f"{'depth':>5} {'n':>6} {'accept':>6}  " + " ".join(f"{'ECE ' + m:>15}" for m in methods)
    head += "  " + " ".join(f"{'AUROC ' + m:>17}" for m in methods)
    lines = [f"evaluation split ({report['split']['evaluation']['prompts']} prompts); calibrators fitted on "
             f"{report['split']['calibration']['prompts']} other prompts", head]
    for g, raw in by["raw"].items():
        eces = " ".join(f"{by[m][g]['ece_uniform']:>15.4f}" for m in methods)
        aucs = " ".join(f"{_fmt(by[m][g]['auroc']):>17}" for m in methods)
        lines.append(f"{g:>5} {raw['n']:>6} {raw['base_rate']:>6.3f}  {eces}  {aucs}")
    cfg = report["config"]
    if "skipped" in report["trust"]:
        lines.append(f"trust thresholds: not certified ({report['trust']['skipped']})")
        return "\n".join(lines)
    lines.append(f"trust thresholds (alpha={cfg['alpha']}, delta={cfg['delta']}; the trusting policy decoded on the "
                 "evaluation prompts at each tau, walked from the largest):")
    lines.append(f"{'score':>12} {'tau':>9} {'risk':>8} {'p-value':>8} {'tpf':>6}  tested")
    for m, t in report["trust"].items():
        last = [x for x in t["steps"] if x["tau"] == t["tau"]]
        risk, p, tpf = ((_fmt(last[0]["risk"]), _fmt(last[0]["p_value"]), _fmt(last[0]["tpf"], ".2f")) if last
                        else ("-", "-", "-"))
        tested = ", ".join(f"{x['tau']:g}: p={x['p_value']:.3f}" for x in t["steps"])
        lines.append(f"{m:>12} {_fmt(t['tau'], '.6g'):>9} {risk:>8} {p:>8} {tpf:>6}  {tested}")
    return "\n".join(lines)


def _fmt(v, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def execute(cfg: DictConfig, run_dir: Path) -> dict:
    report = calibrate(OmegaConf.to_object(cfg), run_dir)
    print(console_table(report))
    for path in report.get("installed", []):
        print(f"installed: {path}")
    print(f"results: {run_dir}")
    return report


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="calibrate")
def app(cfg: DictConfig) -> dict:
    return run_task(cfg, execute)


def main() -> None:
    preflight("calibrate", lambda cfg: check(OmegaConf.to_object(cfg)))
    app()


if __name__ == "__main__":
    main()
