"""Find and read results directories; nothing here runs a model.

A results directory is recognised by the files its app writes:

=================  ===========================================================================
kind               files (app)
=================  ===========================================================================
``run``            ``summary.json`` with ``policies``, ``records.jsonl``, ``steps.parquet`` (``experiments.run``)
``calibration``    ``report.json``, ``rows.parquet``, ``calibrators/*.json`` (``experiments.calibrate``)
``tune``           ``trials.csv``, ``pareto.csv``, ``summary.json`` (``experiments.tune``)
``replay``         ``replay_report.csv`` (``experiments.replay_report``)
``bench``          ``bench.json`` (``experiments.bench``)
=================  ===========================================================================

``find_results(paths)`` walks every path (a results directory or a folder above many) and sorts what it finds by
kind; a path that does not exist, or holds none of these, is a ``ResultsError`` (one line). ``policy_table`` puts
every policy of every run in one table of figures with their 95% intervals.

Example:
    >>> res = find_results(["runs"])
    >>> res.kinds()                                                   # doctest: +SKIP
    {'run': 4, 'calibration': 1, 'tune': 0, 'replay': 0, 'bench': 1}
    >>> policy_table(res)[["label", "tpf", "tpf_lo", "tpf_hi"]]        # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

__all__ = ["KINDS", "QUALITY", "Results", "ResultsError", "Skip", "figure_value", "find_results", "policy_table",
           "read_json", "read_records", "run_meta"]

KINDS = ("run", "calibration", "tune", "replay", "bench")
ALLOWED = ("directories written by python -m experiments.run, experiments.calibrate, experiments.tune, "
           "experiments.replay_report or experiments.bench (or folders above them)")

# Quality figures of a policy (lower is better): column -> (axis label with units, summary.json keys, first found
# wins). errors_per_trusted_token and nll_delta_vs_ar are written by metrics.summary (issue 14); a summary without
# them (older runs) is left out of that panel, with a note.
QUALITY = {
    "errors_per_trusted": ("errors per trusted token\n(shadow rejects / trusted)",
                           ("errors_per_trusted_token", "errors_per_trusted")),
    "nll_delta": ("NLL delta vs ar\n(nats / token)", ("nll_delta_vs_ar", "nll_delta", "target_nll_delta")),
    "lossy_error_rate": ("lossy error rate\n(shadow rejects / new)", ("lossy_error_rate",)),
}


class ResultsError(ValueError):
    """Bad input to the figure library: a missing path, a folder without results, an unreadable file (one line)."""


class Skip(Exception):  # a signal, not an error: the figure has nothing to draw from these results
    """A figure cannot be drawn from the results at hand; the message says what is missing."""


@dataclass
class Results:
    """Results directories by kind (each a sorted list of paths)."""

    run: list[Path] = field(default_factory=list)
    calibration: list[Path] = field(default_factory=list)
    tune: list[Path] = field(default_factory=list)
    replay: list[Path] = field(default_factory=list)
    bench: list[Path] = field(default_factory=list)

    def kinds(self) -> dict[str, int]:
        """How many directories of each kind.

        Example:
            >>> Results().kinds()["run"]
            0
        """
        return {k: len(getattr(self, k)) for k in KINDS}


def _kind(d: Path) -> str | None:
    if (d / "bench.json").is_file():
        return "bench"
    if (d / "replay_report.csv").is_file():
        return "replay"
    if (d / "trials.csv").is_file() and (d / "pareto.csv").is_file():
        return "tune"
    if (d / "report.json").is_file() and (d / "rows.parquet").is_file():
        return "calibration"
    if (d / "summary.json").is_file() and (d / "records.jsonl").is_file():
        return "run"
    return None


def _shown(d: Path) -> Path:
    """``d`` relative to the working directory when it lies below it (captions name ``runs/...``, not a machine's
    absolute path), else as given."""
    try:
        return d.resolve().relative_to(Path.cwd().resolve()) if d.is_absolute() else d
    except ValueError:
        return d


def find_results(paths) -> Results:
    """Every results directory at or below each of ``paths``, by kind (hidden folders such as .hydra skipped).

    Example:
        >>> find_results(["runs/drafters"]).kinds()["run"]               # doctest: +SKIP
        4
    """
    out = Results()
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ResultsError(f"no results directory given; allowed: {ALLOWED}")
    for p in map(Path, paths):
        if not p.exists():
            raise ResultsError(f"{p} does not exist; allowed: {ALLOWED}")
        if not p.is_dir():
            raise ResultsError(f"{p} is a file, not a directory; allowed: {ALLOWED}")
        found = 0
        for root, dirs, _ in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            kind = _kind(Path(root))
            if kind is not None:
                getattr(out, kind).append(_shown(Path(root)))
                found += 1
        if not found:
            raise ResultsError(f"{p} holds no results; allowed: {ALLOWED}")
    for k in KINDS:
        setattr(out, k, sorted(set(getattr(out, k))))
    return out


def read_json(path: str | Path) -> dict:
    """A JSON file, or a one-line ``ResultsError`` naming it if it cannot be read.

    Example:
        >>> read_json("runs/drafters/mtp/summary.json")["policies"].keys()  # doctest: +SKIP
    """
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ResultsError(f"{path} cannot be read as JSON ({str(err).splitlines()[0]}); allowed: the file as "
                           "the app wrote it") from None


def read_records(run_dir: str | Path) -> list[dict]:
    """The lines of a run's ``records.jsonl`` (one dict per (prompt, policy)).

    Example:
        >>> {r["policy"] for r in read_records(run_dir)}                  # doctest: +SKIP
        {'ar', 'fixed', 'threshold'}
    """
    path = Path(run_dir) / "records.jsonl"
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as err:
        raise ResultsError(f"{path} cannot be read ({str(err).splitlines()[0]}); allowed: records.jsonl as "
                           "experiments.run writes it") from None


def run_meta(run_dir: str | Path) -> dict:
    """{"drafter", "temperature", "sampling", "model"} of a run, from its ``config.yaml`` (defaults: mtp, greedy).

    Example:
        >>> run_meta("runs/drafters/medusa")["drafter"]                     # doctest: +SKIP
        'medusa'
    """
    import yaml

    run_dir = Path(run_dir)
    cfg: dict = {}
    if (run_dir / "config.yaml").is_file():
        try:
            cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        except yaml.YAMLError as err:
            raise ResultsError(f"{run_dir / 'config.yaml'} cannot be read ({str(err).splitlines()[0]})") from None
    drafter = (cfg.get("drafter") or {}).get("name", "mtp")
    temperature = float((cfg.get("decode") or {}).get("temperature", 0.0) or 0.0)
    return {"drafter": drafter, "temperature": temperature, "sampling": temperature > 0,
            "model": (cfg.get("model") or {}).get("path", "tiny")}


def figure_value(entry) -> tuple[float, float, float]:
    """(value, low, high) of a summary figure ``{"value": x, "ci95": [lo, hi]}`` (or a bare number); NaN if absent.

    Example:
        >>> figure_value({"value": 2.0, "ci95": [1.5, None]})
        (2.0, 1.5, nan)
    """
    nan = float("nan")
    if isinstance(entry, (int, float)) and not isinstance(entry, bool):
        return float(entry), nan, nan
    if not isinstance(entry, dict) or entry.get("value") is None:
        return nan, nan, nan
    lo, hi = (list(entry.get("ci95") or []) + [None, None])[:2]
    return (float(entry["value"]), nan if lo is None else float(lo), nan if hi is None else float(hi))


def quality_key(entry: dict, column: str) -> str | None:
    """The key of ``entry`` (one policy of a summary) that holds quality figure ``column`` of ``QUALITY``, if any.

    Example:
        >>> quality_key({"nll_delta": {"value": 0.1}}, "nll_delta")
        'nll_delta'
    """
    return next((k for k in QUALITY[column][1] if k in entry), None)


def _short(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _displays(table: pd.DataFrame) -> list[str]:
    """Labels made unique: parameters that differ between rows of one label, then drafter / decoding if mixed."""
    params = [json.loads(p) for p in table["params"]]
    varying: dict[str, set] = {}
    for label in set(table["label"]):
        group = [params[i] for i in range(len(table)) if table["label"].iloc[i] == label]
        keys = set().union(*group) if group else set()
        varying[label] = {k for k in keys if len({json.dumps(g.get(k)) for g in group}) > 1}
    mixed_drafters, mixed_modes = table["drafter"].nunique() > 1, table["sampling"].nunique() > 1
    out = []
    for i, r in enumerate(table.itertuples()):
        name = r.label
        if varying[r.label]:
            name += "(" + ", ".join(f"{k}={_short(params[i].get(k))}" for k in sorted(varying[r.label])) + ")"
        if mixed_drafters:
            name += f" [{r.drafter}]"
        if mixed_modes:
            name += " sampling" if r.sampling else " greedy"
        out.append(name)
    return out


def policy_table(results: Results) -> pd.DataFrame:
    """One row per (run, policy): identity (run, drafter, sampling, label, name, params, lossless, display) and
    every figure as value / ``_lo`` / ``_hi`` columns: tpf, speedup_vs_ar, tokens_per_s, mean_draft_len,
    target_nll, lossy_token_rate and each ``QUALITY`` column (NaN where the summary lacks it). A policy label seen
    in several runs with the same drafter and decoding (the ar / fixed baselines of a sweep) is kept once: the row
    with the most prompts.

    Example:
        >>> t = policy_table(find_results(["runs/drafters"]))           # doctest: +SKIP
        >>> t.loc[t.label == "fixed", ["display", "tpf"]]                # doctest: +SKIP
    """
    rows = []
    for run_dir in results.run:
        summary = read_json(run_dir / "summary.json")
        meta = run_meta(run_dir)
        for label, entry in (summary.get("policies") or {}).items():
            row = {"run": str(run_dir), "drafter": meta["drafter"], "sampling": meta["sampling"], "label": label,
                   "name": entry.get("name", label), "params": json.dumps(entry.get("params", {}), sort_keys=True),
                   "lossless": bool(entry.get("lossless", label == "ar")), "n_prompts": entry.get("n_prompts", 0)}
            for key in ("tpf", "speedup_vs_ar", "tokens_per_s", "mean_draft_len", "target_nll", "lossy_token_rate"):
                row[key], row[key + "_lo"], row[key + "_hi"] = figure_value(entry.get(key))
            for col in QUALITY:
                key = quality_key(entry, col)
                row[col], row[col + "_lo"], row[col + "_hi"] = figure_value(entry.get(key) if key else None)
            rows.append(row)
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    table = (table.sort_values("n_prompts", ascending=False, kind="stable")
             .drop_duplicates(["drafter", "sampling", "label", "params"]).sort_index())
    table = table.reset_index(drop=True)
    table["display"] = _displays(table)
    return table


def finite(x) -> bool:
    """True for a real, finite number."""
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False
