"""Calibrators: maps from a raw confidence q(d_j) to P(accept), one map per depth j, saved as plain JSON.

A ``Calibrator`` fits one monotone map per depth j, because drafts further ahead are typically more over-confident:

    identity      P = q
    temperature   P = sigmoid(logit(q) / T), T by scipy.optimize.minimize_scalar on the negative log-likelihood
    platt         P = sigmoid(a * logit(q) + b), a and b by sklearn LogisticRegression (no penalty)
    isotonic      P = the monotone step-linear fit of sklearn IsotonicRegression, stored as its thresholds

Depth rules: a depth with fewer than ``min_rows`` rows, or only accepted / only rejected drafts, uses the pooled map
(fitted on all depths). A depth beyond the largest depth with its own map uses that largest depth's map (the last MTP
layer is re-used past K, so the deepest fitted behaviour is the best guess). ``depth=None`` means the pooled map.

Labels are 0/1 strict verdicts, or soft labels min(1, p/q) in [0, 1] for sampling (the likelihood is then the
cross-entropy; Platt duplicates each row as a weighted accept and a weighted reject). Fitted parameters are stored as
JSON-safe numbers and predictions are always computed from them, so ``save`` then ``load_calibrator`` predicts
identically. ``split_by_prompt`` makes the calibration / evaluation split with disjoint prompts.
"""

from __future__ import annotations

import difflib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit, logit

# sklearn is imported where a map is fitted or rows are split: loading or applying a calibrator does not need it

_EPS = 1e-6  # q is clipped to [eps, 1 - eps] before logit: fp16 softmax gives q = 1.0 exactly
FORMAT_VERSION = 1


def _logit(conf: np.ndarray) -> np.ndarray:
    return logit(np.clip(conf, _EPS, 1 - _EPS))


class Calibrator(ABC):
    """One small ABC: implement ``_fit_map`` (data -> JSON-safe params) and ``_apply`` (params, q -> P(accept)).

    ``fit`` and ``predict`` handle the per-depth bookkeeping; ``save``/``load_calibrator`` the JSON round trip.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> q, depth = rng.uniform(size=2000), rng.integers(1, 3, size=2000)
        >>> label = rng.uniform(size=2000) < q ** depth          # depth 2 is over-confident
        >>> cal = get_calibrator("platt").fit(q, label, depth)
        >>> cal.predict([0.5, 0.5], depth=[1, 2]).round(2)     # P(accept) of q = 0.5 at depths 1, 2 (truth 0.5, 0.25)
        array([0.49, 0.23])
    """

    name: ClassVar[str] = "custom"

    def __init__(self, min_rows: int = 20):
        self.min_rows = min_rows
        self.pooled: dict[str, Any] | None = None
        self.depth_maps: dict[int, dict[str, Any]] = {}  # only depths fitted on their own rows

    @abstractmethod
    def _fit_map(self, conf: np.ndarray, label: np.ndarray) -> dict[str, Any]:
        """Fit one map on (n,) confidences and (n,) labels; return its parameters as JSON-safe Python numbers."""

    @abstractmethod
    def _apply(self, params: dict[str, Any], conf: np.ndarray) -> np.ndarray:
        """Apply one map to (n,) confidences."""

    def _usable(self, label: np.ndarray) -> bool:
        return label.size >= self.min_rows and bool((label > 0).any() and (label < 1).any())

    def fit(self, conf, label, depth=None) -> Calibrator:
        """Fit the pooled map on all rows, then one map per depth that has enough rows of both classes."""
        conf, label, depth = _check(conf, label, depth)
        if not ((label > 0).any() and (label < 1).any()):
            raise ValueError("calibration data needs both accepted and rejected drafts; got one class only")
        self.pooled = self._fit_map(conf, label)
        self.depth_maps = {}
        if depth is not None:
            for d in np.unique(depth):
                rows = depth == d
                if self._usable(label[rows]):
                    self.depth_maps[int(d)] = self._fit_map(conf[rows], label[rows])
        return self

    def map_for(self, depth: int | None) -> dict[str, Any]:
        """The parameters used at ``depth`` (see the module docstring for the fallback rules)."""
        if self.pooled is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() or load_calibrator() first")
        if depth is None:
            return self.pooled
        if depth in self.depth_maps:
            return self.depth_maps[depth]
        if self.depth_maps and depth > max(self.depth_maps):
            return self.depth_maps[max(self.depth_maps)]
        return self.pooled

    def predict(self, conf, depth=None) -> np.ndarray:
        """P(accept) for each confidence; ``depth`` is one int for all, an array like ``conf``, or None (pooled).

        Example:
            >>> IdentityCalibrator().fit([0.2, 0.9], [0, 1]).predict([0.5])
            array([0.5])
        """
        conf = np.atleast_1d(np.asarray(conf, dtype=float))  # (n,)
        if depth is None or np.ndim(depth) == 0:
            return np.clip(self._apply(self.map_for(None if depth is None else int(depth)), conf), 0.0, 1.0)
        depth = np.asarray(depth, dtype=int)  # (n,)
        out = np.empty_like(conf)
        for d in np.unique(depth):
            rows = depth == d
            out[rows] = self._apply(self.map_for(int(d)), conf[rows])
        return np.clip(out, 0.0, 1.0)

    def predict_one(self, q: float, depth: int | None = None) -> float:
        """``float(predict([q], depth=[depth])[0])`` (the same arithmetic on the same one-element array), without
        ``predict``'s grouping by depth: a decoder maps one new draft per policy call.

        Example:
            >>> IdentityCalibrator().fit([0.2, 0.9], [0, 1]).predict_one(0.5, depth=2)
            0.5
        """
        return float(np.clip(self._apply(self.map_for(depth), np.array([q], dtype=float)), 0.0, 1.0)[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "calibrator": self.name,
            "format_version": FORMAT_VERSION,
            "min_rows": self.min_rows,
            "pooled": self.pooled,
            "depths": {str(d): p for d, p in sorted(self.depth_maps.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        cal = cls(min_rows=data["min_rows"])
        cal.pooled = data["pooled"]
        cal.depth_maps = {int(d): p for d, p in data["depths"].items()}
        return cal

    def save(self, path) -> None:
        """Write the fitted maps as JSON (no pickle): ``load_calibrator(path)`` rebuilds an identical calibrator.

        Example:
            >>> cal.save("runs/cal/isotonic.json")  # doctest: +SKIP
        """
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_rows={self.min_rows}, depths={sorted(self.depth_maps)})"


class IdentityCalibrator(Calibrator):
    """P(accept) = q: the baseline every other calibrator has to beat."""

    name = "identity"

    def fit(self, conf, label, depth=None) -> Calibrator:
        _check(conf, label, depth)
        self.pooled, self.depth_maps = {}, {}
        return self

    def _fit_map(self, conf, label):
        return {}

    def _apply(self, params, conf):
        return conf


class TemperatureCalibrator(Calibrator):
    """P(accept) = sigmoid(logit(q) / T); T > 1 softens an over-confident drafter. One parameter per depth."""

    name = "temperature"

    def _fit_map(self, conf, label):
        z = _logit(conf)

        def nll(log_t: float) -> float:  # cross-entropy; soft labels allowed
            s = z / np.exp(log_t)
            return -float(np.mean(label * log_expit(s) + (1 - label) * log_expit(-s)))

        res = minimize_scalar(nll, bounds=(np.log(1e-2), np.log(1e2)), method="bounded", options={"xatol": 1e-6})
        return {"T": float(np.exp(res.x))}

    def _apply(self, params, conf):
        return expit(_logit(conf) / params["T"])


class PlattCalibrator(Calibrator):
    """P(accept) = sigmoid(a * logit(q) + b), fitted by unpenalised logistic regression on logit(q)."""

    name = "platt"

    def _fit_map(self, conf, label):
        z = _logit(conf)[:, None]  # (n, 1)
        # soft label y: the row counts as an accept with weight y and as a reject with weight 1 - y
        x = np.concatenate([z, z])  # (2n, 1)
        y = np.concatenate([np.ones_like(label), np.zeros_like(label)])
        w = np.concatenate([label, 1 - label])
        keep = w > 0
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=np.inf).fit(x[keep], y[keep], sample_weight=w[keep])
        return {"coef": float(lr.coef_[0, 0]), "intercept": float(lr.intercept_[0])}

    def _apply(self, params, conf):
        return expit(params["coef"] * _logit(conf) + params["intercept"])


class IsotonicCalibrator(Calibrator):
    """The monotone non-decreasing fit of label on q (sklearn IsotonicRegression, clipped to [0, 1] and at the ends).

    Stored as ``X_thresholds_`` / ``y_thresholds_`` and applied with ``np.interp``, which is what sklearn's
    ``predict`` computes with ``out_of_bounds="clip"``.
    """

    name = "isotonic"

    def _fit_map(self, conf, label):
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(conf, label)
        return {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}

    def _apply(self, params, conf):
        return np.interp(conf, params["x"], params["y"])


CALIBRATORS: dict[str, type[Calibrator]] = {
    c.name: c for c in (IdentityCalibrator, TemperatureCalibrator, PlattCalibrator, IsotonicCalibrator)
}


def get_calibrator(name: str, **kwargs) -> Calibrator:
    """A fresh, unfitted calibrator by registry name.

    Example:
        >>> get_calibrator("platt", min_rows=50)
        PlattCalibrator(min_rows=50, depths=[])
    """
    if name not in CALIBRATORS:
        close = difflib.get_close_matches(name, CALIBRATORS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown calibrator {name!r}{hint} (known: {', '.join(CALIBRATORS)})")
    return CALIBRATORS[name](**kwargs)


def load_calibrator(path) -> Calibrator:
    """Rebuild a calibrator written by ``Calibrator.save``.

    Example:
        >>> cal = load_calibrator("runs/cal/isotonic.json")  # doctest: +SKIP
    """
    data = json.loads(Path(path).read_text())
    if data.get("format_version") != FORMAT_VERSION or data.get("calibrator") not in CALIBRATORS:
        raise ValueError(f"{path}: not a specpolicy calibrator file (format {FORMAT_VERSION})")
    return CALIBRATORS[data["calibrator"]].from_dict(data)


def split_by_prompt(df: pd.DataFrame, frac: float = 0.5, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows into (calibration, evaluation) with disjoint ``prompt_id`` sets; ``frac`` of prompts calibrate.

    Example:
        >>> traces = pd.DataFrame({"prompt_id": list("aabbcd"), "confidence": 0.5, "label": 1})
        >>> cal_df, eval_df = split_by_prompt(traces, frac=0.5, seed=0)
        >>> set(cal_df.prompt_id) & set(eval_df.prompt_id)
        set()
    """
    if not 0 < frac < 1:
        raise ValueError(f"frac must be in (0, 1); got {frac}")
    if df["prompt_id"].nunique() < 2:
        raise ValueError("split_by_prompt needs at least two distinct prompt_id values")
    from sklearn.model_selection import GroupShuffleSplit

    splitter = GroupShuffleSplit(n_splits=1, train_size=frac, random_state=seed)
    cal_idx, eval_idx = next(splitter.split(df, groups=df["prompt_id"].to_numpy()))
    return df.iloc[np.sort(cal_idx)], df.iloc[np.sort(eval_idx)]


def _check(conf, label, depth):
    conf = np.asarray(conf, dtype=float).ravel()  # (n,)
    label = np.asarray(label, dtype=float).ravel()  # (n,)
    if conf.shape != label.shape:
        raise ValueError(f"conf and label differ in length: {conf.size} vs {label.size}")
    if conf.size == 0:
        raise ValueError("no rows to fit")
    if not (np.all((conf >= 0) & (conf <= 1)) and np.all((label >= 0) & (label <= 1))):
        raise ValueError("conf and label must lie in [0, 1] (no NaN)")
    if depth is not None:
        depth = np.asarray(depth).ravel()
        if depth.shape != conf.shape:
            raise ValueError(f"depth has {depth.size} rows, conf {conf.size}")
        if not np.issubdtype(depth.dtype, np.integer) or depth.min() < 1:
            raise ValueError("depth must be integers >= 1")
    return conf, label, depth
