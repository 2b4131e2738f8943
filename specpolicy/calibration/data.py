"""Calibration data: one row per drafted token that the strict rule judged, from decoded results or a run directory.

A step drafts d_1..d_m and the decoder walks them in order: a trusted (or relaxed-accepted) draft is committed and the
walk goes on; the first draft that is neither is the last one walked. Only walked drafts have a strict verdict
(``StepRecord.verdicts``, the shadow verdict for trusted/relaxed ones); drafts behind the first rejection were never
judged and are dropped. So a row at depth j is a draft that *reached* the strict rule, and its label estimates
P(accept d_j | d_1..d_{j-1} walked) -- the conditional acceptance a per-depth calibrator maps q(d_j) to.

Columns (``ROW_COLUMNS``):

    prompt_id, policy, step   where the draft comes from (``policy`` is the run's policy label)
    depth                     j, 1-based
    position                  new-token index the draft would take: the step's ``position`` + j - 1
    draft                     token id of d_j
    confidence                q(d_j); entropy H(q_j) in nats; margin q(top-1) - q(top-2)
    trusted                   the policy committed d_j without the target's veto
    label                     strict verdict, 1 = accept (greedy: d_j == argmax p; sampling: the u < p/q draw)
    soft_label                accept_prob: min(1, p(d_j)/q(d_j)) when sampling; equal to label when greedy

Example:
    >>> rows = collect(load_model("tiny"), prompts, k=6, max_new_tokens=128)          # doctest: +SKIP
    >>> rows = rows_from_run("runs/run/2024-01-01_12-00-00_threshold")               # doctest: +SKIP
    >>> rows.groupby("depth").label.mean()                                            # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UserError

__all__ = ["ROW_COLUMNS", "CalibrationDataError", "collect", "rows_from_results", "rows_from_run", "rows_from_steps"]

ROW_COLUMNS = (
    "prompt_id", "policy", "step", "depth", "position", "draft", "confidence", "entropy", "margin", "trusted",
    "label", "soft_label",
)  # fmt: skip
_PER_DRAFT = {"drafts": "draft", "confidence": "confidence", "entropy": "entropy", "margin": "margin",
              "trusted": "trusted", "verdicts": "label", "accept_prob": "soft_label"}  # step column -> row column
_DTYPES = {"step": "int64", "depth": "int64", "position": "int64", "draft": "int64", "confidence": "float64",
           "entropy": "float64", "margin": "float64", "trusted": "bool", "label": "int64", "soft_label": "float64"}


class CalibrationDataError(UserError):
    """Input that holds no calibration data (missing run directory or steps.parquet, wrong columns); one line."""


def rows_from_steps(steps: pd.DataFrame) -> pd.DataFrame:
    """Rows (``ROW_COLUMNS``) from a table of steps with ``prompt_id, policy, step, position`` and the per-draft list
    columns ``drafts, confidence, entropy, margin, trusted, verdicts, accept_prob`` (the ``steps.parquet`` schema).

    Example:
        >>> steps = pd.DataFrame({"prompt_id": ["a"], "policy": ["fixed"], "step": [0], "position": [1],
        ...     "drafts": [[5, 6, 7]], "confidence": [[0.9, 0.8, 0.7]], "entropy": [[0.1, 0.2, 0.3]],
        ...     "margin": [[0.8, 0.6, 0.4]], "trusted": [[False] * 3], "verdicts": [[True, False]],
        ...     "accept_prob": [[1.0, 0.0]]})
        >>> rows_from_steps(steps)[["depth", "position", "draft", "label"]].values.tolist()   # d_3: never walked
        [[1, 1, 5, 1], [2, 2, 6, 0]]
    """
    missing = {"prompt_id", "policy", "step", "position", *_PER_DRAFT} - set(steps.columns)
    if missing:
        raise CalibrationDataError(f"steps table lacks columns {sorted(missing)}; allowed: the steps.parquet schema")
    walked = np.array([len(v) for v in steps["verdicts"]], dtype=np.int64)  # (n_steps,) drafts judged per step
    n = int(walked.sum())
    if n == 0:
        return pd.DataFrame({c: pd.Series(dtype=_DTYPES.get(c, "object")) for c in ROW_COLUMNS})
    step_of_row = np.repeat(np.arange(len(steps)), walked)  # (n,)
    depth = np.arange(n) - np.repeat(np.cumsum(walked) - walked, walked) + 1  # (n,) 1..walked per step
    out: dict[str, Any] = {
        "prompt_id": steps["prompt_id"].astype(str).to_numpy()[step_of_row],
        "policy": steps["policy"].astype(str).to_numpy()[step_of_row],
        "step": steps["step"].to_numpy(np.int64)[step_of_row],
        "depth": depth,
        "position": steps["position"].to_numpy(np.int64)[step_of_row] + depth - 1,
    }
    for col, name in _PER_DRAFT.items():
        values = steps[col].tolist()
        if any(len(v) < w for v, w in zip(values, walked)):
            raise CalibrationDataError(f"steps column {col!r} is shorter than verdicts in some step; corrupt steps")
        out[name] = np.concatenate([np.asarray(v[:w], dtype=float) for v, w in zip(values, walked) if w])
    df = pd.DataFrame(out)[list(ROW_COLUMNS)]
    return df.astype(_DTYPES)


def rows_from_results(results: Sequence, prompt_ids: Sequence[str], policy: str) -> pd.DataFrame:
    """Rows from decoded results: each item a ``GenerationResult`` or a sequence of its ``StepRecord``s.

    Example:
        >>> res = generate(model, prompt.ids, "fixed", k=6, max_new_tokens=64)          # doctest: +SKIP
        >>> rows_from_results([res], [prompt.id], "fixed").depth.max()                   # doctest: +SKIP
        6
    """
    if len(results) != len(prompt_ids):
        raise ValueError(f"{len(results)} results but {len(prompt_ids)} prompt ids; give one id per result")
    table = []
    for res, pid in zip(results, prompt_ids):
        for s in getattr(res, "steps", res):
            d = s.to_dict() if hasattr(s, "to_dict") else dict(s)
            table.append({"prompt_id": str(pid), "policy": policy, **{k: d[k] for k in ("step", "position", *_PER_DRAFT)}})
    if not table:
        return rows_from_steps(pd.DataFrame(columns=["prompt_id", "policy", "step", "position", *_PER_DRAFT]))
    return rows_from_steps(pd.DataFrame(table))


def rows_from_run(run_dir: str | Path, policy: str | None = None) -> pd.DataFrame:
    """Rows from ``<run_dir>/steps.parquet`` (written by ``python -m experiments.run``), optionally of one policy label.

    Raises ``CalibrationDataError`` (one line) for a missing directory or file, or an unknown policy label.

    Example:
        >>> rows = rows_from_run("runs/run/2024-01-01_12-00-00_threshold", policy="threshold")   # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    path = run_dir / "steps.parquet"
    if not run_dir.is_dir():
        raise CalibrationDataError(f"run directory {str(run_dir)!r} does not exist; allowed: a directory written by "
                                   "python -m experiments.run (it holds steps.parquet)")
    if not path.is_file():
        raise CalibrationDataError(f"{str(run_dir)!r} has no steps.parquet; allowed: a directory written by "
                                   "python -m experiments.run (run it to completion)")
    steps = pd.read_parquet(path)
    if policy is not None:
        labels = sorted(steps["policy"].unique())
        if policy not in labels:
            raise CalibrationDataError(f"policy {policy!r} is not in {path}; allowed: {', '.join(labels)}")
        steps = steps[steps["policy"] == policy]
    return rows_from_steps(steps.reset_index(drop=True))


def collect(
    model,
    prompts: Iterable,
    policy: str = "fixed",
    k: int = 6,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
    progress: bool = False,
    **policy_params,
) -> pd.DataFrame:
    """Decode ``prompts`` with a policy that drafts deep (``fixed`` with k=``k`` by default) and return their rows.

    ``fixed(k)`` drafts k tokens every step whatever their confidence, so every depth 1..k gets labels (up to the
    first rejection); an adaptive policy would only label the depths it chose to reach. ``prompts`` holds
    ``specpolicy.data.Prompt``s (their ``id`` names the rows), strings, or token-id lists (named by index). With
    ``temperature > 0`` prompt i is sampled with seed ``seed + i`` and ``soft_label`` holds min(1, p/q).

    Example:
        >>> rows = collect(load_model("tiny"), sample_prompts(corpus, tok, 64), k=6)      # doctest: +SKIP
    """
    from specpolicy.decoding import generate  # calibration is numbers; decoding is only needed to collect

    params = dict(policy_params, k=k) if policy == "fixed" else policy_params
    results, ids = [], []
    items = list(prompts)
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="collect", unit="prompt", dynamic_ncols=True)
    for i, p in enumerate(items):
        ids.append(getattr(p, "id", str(i)))
        tokens = list(p.ids) if hasattr(p, "ids") else p
        res = generate(model, tokens, policy, max_new_tokens=max_new_tokens, temperature=temperature,
                       seed=seed + i, **params)
        results.append(res)
    return rows_from_results(results, ids, policy)

