"""Fit calibrators on one half of the prompts, measure them on the other, and certify a trust threshold for each:
the library half of ``python -m experiments.calibrate``.

``evaluate_calibrators`` splits the rows by prompt (``split_by_prompt``), fits identity plus each named calibrator
per depth on the calibration half, measures raw q and every calibrator per depth on the evaluation half
(``calibration_report``), certifies a trust threshold per score by Learn-then-Test on out-of-fold scores of the
calibration half with prompt-level p-values (``certify``), and checks it on the evaluation half (``trust_check``).

Example:
    >>> out = evaluate_calibrators(rows, ["temperature", "platt", "isotonic"], alpha=0.05, delta=0.1)
    >>> out.trust["platt"]["tau"], out.ece["platt"]
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .calibrators import Calibrator, get_calibrator, split_by_prompt
from .guarantee import choose_tau_trust
from .metrics import calibration_report

__all__ = ["CalibrationOutcome", "certify", "evaluate_calibrators", "fit_calibrators", "out_of_fold_scores",
           "trust_check"]


def fit_calibrators(cal: pd.DataFrame, names: list[str], label_col: str, min_rows: int) -> dict[str, Calibrator]:
    """identity (the raw baseline) plus each named calibrator, fitted per depth on the calibration rows."""
    out = {}
    for name in ["identity", *[n for n in names if n != "identity"]]:
        out[name] = get_calibrator(name, min_rows=min_rows).fit(cal["confidence"], cal[label_col], cal["depth"])
    return out


def out_of_fold_scores(cal: pd.DataFrame, name: str, label_col: str = "label", min_rows: int = 20,
                       seed: int = 0) -> np.ndarray:
    """(n,) scores of the calibration rows from calibrators that never saw them: 2 folds by prompt, each scored by
    the map fitted on the other. Certifying on in-sample scores is optimistic for flexible maps (isotonic: the error
    among trusted test drafts exceeded alpha in ~19% of prompt splits at delta = 10%; out of fold: ~6%)."""
    if name == "identity":
        return cal["confidence"].to_numpy(float)
    a, b = split_by_prompt(cal, frac=0.5, seed=seed)
    out = pd.Series(np.nan, index=cal.index)
    for fit, score in ((a, b), (b, a)):
        c = get_calibrator(name, min_rows=min_rows).fit(fit["confidence"], fit[label_col], fit["depth"])
        out[score.index] = c.predict(score["confidence"], score["depth"].to_numpy(int))
    return out.to_numpy()


def certify(cal: pd.DataFrame, name: str, alpha: float, delta: float, label_col: str = "label", min_rows: int = 20,
            seed: int = 0, future_groups: int | None = None):
    """The trust threshold for calibrator ``name``: Learn-then-Test on out-of-fold scores of the calibration rows
    (all depths pooled, as a ``threshold`` policy compares one tau_trust with every depth), prompt-level p-values."""
    score = out_of_fold_scores(cal, name, label_col, min_rows, seed)
    return choose_tau_trust(score, cal["label"], alpha=alpha, delta=delta, groups=cal["prompt_id"].to_numpy(),
                            future_groups=future_groups)


def trust_check(t, ev: pd.DataFrame, ev_score) -> dict:
    """The certified threshold ``t`` with its realised error and share trusted on the evaluation rows."""
    trusted = t.trusted(ev_score)  # (n_eval,)
    n = int(trusted.sum())
    return {**t.to_dict(), "eval_n": len(ev), "eval_n_trusted": n, "eval_trusted_share": n / len(ev),
            "eval_error": float(1 - ev["label"].to_numpy()[trusted].mean()) if n else None}


def _records(df: pd.DataFrame) -> list[dict]:
    """JSON-safe records of a table (NaN -> None)."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in json.loads(df.to_json(orient="records"))]


@dataclass(frozen=True)
class CalibrationOutcome:
    """What ``evaluate_calibrators`` found. Methods are ``raw`` (identity) and each calibrator's name."""

    cal: pd.DataFrame  # calibration rows
    ev: pd.DataFrame  # evaluation rows
    calibrators: dict  # name -> fitted Calibrator (identity included)
    reports: dict  # method -> per-depth calibration_report records
    ece: dict  # method -> {depth group: equal-width ECE}
    trust: dict  # method -> certified threshold (TrustThreshold.to_dict) and its evaluation figures

    @property
    def split_info(self) -> dict:
        return {s: {"prompts": int(d["prompt_id"].nunique()), "rows": len(d)}
                for s, d in (("calibration", self.cal), ("evaluation", self.ev))}


def evaluate_calibrators(rows: pd.DataFrame, names, alpha: float = 0.05, delta: float = 0.1,
                         label_col: str = "label", cal_frac: float = 0.5, split_seed: int = 0, min_rows: int = 20,
                         n_boot: int = 200, n_bins: int = 15) -> CalibrationOutcome:
    """The whole measurement (module docstring) on ``rows`` (``ROW_COLUMNS``); raises ``ValueError`` when the
    calibration half cannot fit a calibrator."""
    cal, ev = split_by_prompt(rows, frac=cal_frac, seed=split_seed)
    cals = fit_calibrators(cal, list(names), label_col, min_rows)
    ece, reports, trust = {}, {}, {}
    for name, c in cals.items():
        method = "raw" if name == "identity" else name
        ev_score = c.predict(ev["confidence"], ev["depth"].to_numpy(int))
        rep = calibration_report(ev.assign(score=ev_score), n_boot=n_boot, conf_col="score", label_col=label_col,
                                 n_bins=n_bins)
        reports[method] = _records(rep)
        ece[method] = dict(zip(rep["group"], rep["ece_uniform"].round(4)))
        t = certify(cal, name, alpha, delta, label_col, min_rows, split_seed)
        trust[method] = trust_check(t, ev, ev_score)
    return CalibrationOutcome(cal, ev, cals, reports, ece, trust)
