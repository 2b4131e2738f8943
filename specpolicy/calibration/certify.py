"""Fit calibrators on one half of the prompts and measure them on the other: the calibration half of
``python -m experiments.calibrate``.

``evaluate_calibrators`` splits the rows by prompt (``split_by_prompt``), fits identity plus each named calibrator
per depth on the calibration half (the maps that are shipped, never refitted), and measures raw q and every
calibrator per depth on the evaluation half (``calibration_report``). A trust threshold is not certified here, on
rows of a lossless run: it is certified on runs of the trusting policy itself (``trust_certificate``).

Example:
    >>> out = evaluate_calibrators(rows, ["temperature", "platt", "isotonic"])          # doctest: +SKIP
    >>> out.ece["platt"]                                                                # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pandas as pd

from .calibrators import Calibrator, get_calibrator, split_by_prompt
from .metrics import calibration_report

__all__ = ["CalibrationOutcome", "evaluate_calibrators", "fit_calibrators"]


def fit_calibrators(cal: pd.DataFrame, names: list[str], label_col: str, min_rows: int) -> dict[str, Calibrator]:
    """identity (the raw baseline) plus each named calibrator, fitted per depth on the calibration rows.

    Example:
        >>> sorted(fit_calibrators(cal_rows, ["platt"], "label", 20))                       # doctest: +SKIP
        ['identity', 'platt']
    """
    out = {}
    for name in ["identity", *[n for n in names if n != "identity"]]:
        out[name] = get_calibrator(name, min_rows=min_rows).fit(cal["confidence"], cal[label_col], cal["depth"])
    return out


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

    @property
    def split_info(self) -> dict:
        return {s: {"prompts": int(d["prompt_id"].nunique()), "rows": len(d)}
                for s, d in (("calibration", self.cal), ("evaluation", self.ev))}


def evaluate_calibrators(rows: pd.DataFrame, names, label_col: str = "label", cal_frac: float = 0.5,
                         split_seed: int = 0, min_rows: int = 20, n_boot: int = 200,
                         n_bins: int = 15) -> CalibrationOutcome:
    """The whole measurement (module docstring) on ``rows`` (``ROW_COLUMNS``); raises ``ValueError`` when the
    calibration half cannot fit a calibrator.

    Example:
        >>> evaluate_calibrators(rows, ["platt"]).split_info["evaluation"]["prompts"]       # doctest: +SKIP
        64
    """
    cal, ev = split_by_prompt(rows, frac=cal_frac, seed=split_seed)
    cals = fit_calibrators(cal, list(names), label_col, min_rows)
    ece, reports = {}, {}
    for name, c in cals.items():
        method = "raw" if name == "identity" else name
        ev_score = c.predict(ev["confidence"], ev["depth"].to_numpy(int))
        rep = calibration_report(ev.assign(score=ev_score), n_boot=n_boot, conf_col="score", label_col=label_col,
                                 n_bins=n_bins)
        reports[method] = _records(rep)
        ece[method] = dict(zip(rep["group"], rep["ece_uniform"].round(4)))
    return CalibrationOutcome(cal, ev, cals, reports, ece)
