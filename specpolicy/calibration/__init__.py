"""Calibration: how well drafted-token confidences predict acceptance, maps that fix them, and certified trust.

Pure numbers over trace tables (one row per drafted token: ``depth, confidence, entropy, margin, position,
prompt_id, policy, label`` and optionally ``soft_label``); nothing here runs a model except ``collect``, which
drives the decoder to record such rows.

- ``metrics``: ECE (equal-width and equal-mass bins), MCE, Brier, log loss, AUROC, reliability tables, and
  ``calibration_report`` with prompt-level bootstrap intervals.
- ``calibrators``: identity / temperature / Platt / isotonic maps q -> P(accept), fitted per depth, saved as JSON.
- ``data``: the rows themselves, from decoded results, a run's ``steps.parquet``, or a dedicated ``collect`` run.
- ``policy``: the ``calibrated`` policy (registered on import): any registered policy fed calibrated P(accept).
- ``certify``: fit on one half of the prompts, measure on the other, certify a threshold per score (the library half
  of ``python -m experiments.calibrate``).
- ``guarantee``: ``choose_tau_trust`` picks tau_trust so the error rate of trusted drafts is <= alpha with
  probability >= 1 - delta (Learn-then-Test, fixed-sequence, exact binomial p-values).

Example:
    >>> from specpolicy.calibration import get_calibrator, split_by_prompt, choose_tau_trust, ece
    >>> cal_df, eval_df = split_by_prompt(traces)                                        # doctest: +SKIP
    >>> cal = get_calibrator("isotonic").fit(cal_df.confidence, cal_df.label, cal_df.depth)  # doctest: +SKIP
    >>> p_hat = cal.predict(eval_df.confidence, eval_df.depth)                           # doctest: +SKIP
    >>> ece(p_hat, eval_df.label), choose_tau_trust(p_hat, eval_df.label, alpha=0.05).tau  # doctest: +SKIP
"""

from .calibrators import (
    CALIBRATORS,
    Calibrator,
    IdentityCalibrator,
    IsotonicCalibrator,
    PlattCalibrator,
    TemperatureCalibrator,
    get_calibrator,
    load_calibrator,
    split_by_prompt,
)
from .certify import (
    CalibrationOutcome,
    certify,
    evaluate_calibrators,
    fit_calibrators,
    out_of_fold_scores,
    trust_check,
)
from .data import ROW_COLUMNS, CalibrationDataError, collect, rows_from_results, rows_from_run, rows_from_steps
from .guarantee import TrustThreshold, choose_tau_trust, default_grid, min_calibration_size
from .metrics import auroc, brier, calibration_report, ece, log_loss, mce, reliability_table
from .policy import (
    SHIPPED_DIR,
    CalibratedPolicy,
    calibrator_drafter,
    resolve_calibrator,
    shipped_calibrators,
    shipped_dir,
)

__all__ = [
    "CALIBRATORS",
    "ROW_COLUMNS",
    "SHIPPED_DIR",
    "CalibratedPolicy",
    "CalibrationOutcome",
    "CalibrationDataError",
    "Calibrator",
    "IdentityCalibrator",
    "IsotonicCalibrator",
    "PlattCalibrator",
    "TemperatureCalibrator",
    "TrustThreshold",
    "auroc",
    "brier",
    "calibration_report",
    "calibrator_drafter",
    "certify",
    "choose_tau_trust",
    "collect",
    "default_grid",
    "ece",
    "evaluate_calibrators",
    "fit_calibrators",
    "get_calibrator",
    "load_calibrator",
    "log_loss",
    "mce",
    "out_of_fold_scores",
    "min_calibration_size",
    "reliability_table",
    "resolve_calibrator",
    "rows_from_results",
    "rows_from_run",
    "rows_from_steps",
    "shipped_calibrators",
    "shipped_dir",
    "split_by_prompt",
    "trust_check",
]
