"""Calibration: how well drafted-token confidences predict acceptance, maps that fix them, and certified trust.

Pure numbers over trace tables (one row per drafted token: ``depth, confidence, entropy, margin, position,
prompt_id, policy, label`` and optionally ``soft_label``); nothing here runs a model except ``collect``, which
drives the decoder to record such rows.

- ``metrics``: ECE (equal-width and equal-mass bins), MCE, Brier, log loss, AUROC, reliability tables, and
  ``calibration_report`` with prompt-level bootstrap intervals.
- ``calibrators``: identity / temperature / Platt / isotonic maps q -> P(accept), fitted per depth, saved as JSON.
- ``data``: the rows themselves, from decoded results, a run's ``steps.parquet``, or a dedicated ``collect`` run.
- ``policy``: the ``calibrated`` policy (registered on import): any registered policy fed calibrated P(accept).
- ``certify``: fit on one half of the prompts, measure on the other (the library half of
  ``python -m experiments.calibrate``).
- ``trust_runs``, ``trust_certificate``, ``trust_validation``: the certificate of a deployed trusting policy: its own
  runs at a fixed grid of taus (``trust_runs``), Learn-then-Test with betting p-values over prompts
  (``certify_trust``: risk <= alpha with probability >= 1 - delta over the calibration prompts), and its check over
  many random calibration/test splits (``validate_trust``).

Example:
    >>> from specpolicy.calibration import get_calibrator, split_by_prompt, ece
    >>> cal_df, eval_df = split_by_prompt(traces)                                        # doctest: +SKIP
    >>> cal = get_calibrator("isotonic").fit(cal_df.confidence, cal_df.label, cal_df.depth)  # doctest: +SKIP
    >>> p_hat = cal.predict(eval_df.confidence, eval_df.depth)                           # doctest: +SKIP
    >>> ece(p_hat, eval_df.label)                                                        # doctest: +SKIP
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
from .certify import CalibrationOutcome, evaluate_calibrators, fit_calibrators
from .data import ROW_COLUMNS, CalibrationDataError, collect, rows_from_results, rows_from_run, rows_from_steps
from .metrics import auroc, brier, calibration_report, ece, log_loss, mce, reliability_table
from .policy import (
    SHIPPED_DIR,
    CalibratedPolicy,
    calibrator_drafter,
    resolve_calibrator,
    shipped_calibrators,
    shipped_dir,
)
from .trust_certificate import BETS, RISKS, TrustCertificate, betting_p_value, certify_trust, per_prompt_losses, risk_of
from .trust_runs import TABLE_COLUMNS, arm_label, trust_arms, trust_counts, trust_plan, trust_table
from .trust_validation import validate_trust, validation_table

__all__ = [
    "BETS",
    "RISKS",
    "TABLE_COLUMNS",
    "TrustCertificate",
    "arm_label",
    "betting_p_value",
    "certify_trust",
    "per_prompt_losses",
    "risk_of",
    "trust_arms",
    "trust_counts",
    "trust_plan",
    "trust_table",
    "validate_trust",
    "validation_table",
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
    "auroc",
    "brier",
    "calibration_report",
    "calibrator_drafter",
    "collect",
    "ece",
    "evaluate_calibrators",
    "fit_calibrators",
    "get_calibrator",
    "load_calibrator",
    "log_loss",
    "mce",
    "reliability_table",
    "resolve_calibrator",
    "rows_from_results",
    "rows_from_run",
    "rows_from_steps",
    "shipped_calibrators",
    "shipped_dir",
    "split_by_prompt",
]
