"""Runs of the deployed trusting policy at a fixed grid of trust thresholds: the data a trust certificate is built on.

A trust threshold is certified on what the policy that will be shipped actually does, not on rows of a lossless
``fixed`` run: for every candidate tau of a small grid fixed in advance, the trusting policy (``threshold`` with
``tau_trust=tau``, or ``calibrated`` around it with the calibrator that will be shipped) decodes every calibration
prompt once, with the real decoder. Each run is one ``RecordStore`` record (resumable: a killed run continues where
it stopped), and ``trust_table`` reduces them to one row per (prompt, tau):

    n_trusted   tokens committed with provenance ``trusted``
    n_errors    of those, how many the strict rule rejected (the shadow verdict, judged against the committed prefix:
                after a wrong trusted token the target judges the next drafts on the diverged text, which is the
                text the user gets)
    new_tokens, target_forwards   for the speed (TPF) of the tau

Those rows are reused across any number of calibration/test splits (``trust_certificate.certify_trust``).

Example:
    >>> arms = trust_arms([0.95, 0.9, 0.8])
    >>> plan = trust_plan(arms, max_new_tokens=48, n_prompts=240, data_seed=2)
    >>> store = open_store(run_dir, plan); decode_run(plan, model, prompts, store)       # doctest: +SKIP
    >>> table = trust_table(store)                                                       # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from types import SimpleNamespace

import pandas as pd

from ..policies import get_policy
from ..runs.arms import Arm
from ..runs.checks import RunPlan

__all__ = ["TABLE_COLUMNS", "arm_label", "trust_arms", "trust_counts", "trust_plan", "trust_table"]

TABLE_COLUMNS = ("prompt_id", "policy", "tau", "n_trusted", "n_errors", "new_tokens", "target_forwards")


def arm_label(tau: float) -> str:
    """The record label of the run at ``tau``.

    Example:
        >>> arm_label(0.9)
        'trust@0.9'
    """
    return f"trust@{float(tau):g}"


def trust_arms(taus: Sequence[float], base_params: Mapping | None = None, calibrator: str | None = None,
               drafter: str = "mtp") -> list[Arm]:
    """One arm per candidate tau, most conservative (largest) first: ``threshold(tau_trust=tau, **base_params)``, or
    with ``calibrator`` (a shipped name or a path) ``calibrated`` around it, which compares tau with calibrated P(accept).

    Example:
        >>> [(a.label, a.params["tau_trust"]) for a in trust_arms([0.8, 0.9])]
        [('trust@0.9', 0.9), ('trust@0.8', 0.8)]
    """
    taus = sorted({float(t) for t in taus}, reverse=True)
    if not taus or not all(0 < t < 1 for t in taus):
        raise ValueError(f"taus={list(taus)} is invalid; allowed: a non-empty list of values in (0, 1)")
    arms = []
    for tau in taus:
        params = {**dict(base_params or {}), "tau_trust": tau}
        if calibrator is None:
            name, full = "threshold", get_policy("threshold", **params).params()
        else:
            name = "calibrated"
            full = get_policy(name, base="threshold", base_params=params, calibrator=calibrator,
                              drafter=drafter).params()
        arms.append(Arm(arm_label(tau), name, full, "policy"))
    return arms


def trust_plan(arms: Sequence[Arm], max_new_tokens: int, n_prompts: int, data_seed: int, prompt_tokens: int = 64,
               split: str = "test", model: str = "tiny", drafter: str = "mtp", threads: int = 1) -> RunPlan:
    """The ``RunPlan`` that decodes ``arms`` greedily on ``n_prompts`` stdlib prompts (``runs.runner.decode_run``).

    Example:
        >>> trust_plan(trust_arms([0.9]), 48, 240, 2).decode.max_new_tokens
        48
    """
    m = SimpleNamespace(path=model, device="cpu", dtype=None)
    data = SimpleNamespace(name="stdlib_test", n_prompts=n_prompts, prompt_tokens=prompt_tokens, seed=data_seed,
                           split=split, path="")
    dec = SimpleNamespace(temperature=0.0, max_new_tokens=max_new_tokens, top_p=1.0, top_k=0, seed=0, max_draft=16)
    settings = {"model": vars(m), "data": vars(data), "decode": vars(dec), "drafter": drafter}
    run_key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return RunPlan(tuple(arms), m, data, dec, threads=threads, nll=False, bootstrap=0, run_key=run_key,
                   drafter=drafter)


def trust_counts(steps: Sequence[Mapping]) -> tuple[int, int]:
    """(trusted tokens, of which the strict shadow verdict rejected) over one generation's step dicts.

    Example:
        >>> trust_counts([{"provenance": ["trusted", "trusted", "target"], "verdicts": [True, False], "accepted": 2}])
        (2, 1)
    """
    n = e = 0
    for s in steps:
        for j, prov in enumerate(s["provenance"][: s["accepted"]]):
            if prov == "trusted":
                n += 1
                e += not s["verdicts"][j]
    return n, e


def trust_table(store, taus: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per (prompt, trusting run) of ``store`` (a ``RecordStore``): ``TABLE_COLUMNS``.

    ``taus`` maps record labels to their tau (default: every record whose params carry ``tau_trust``, directly or in
    ``base_params``).

    Example:
        >>> trust_table(RecordStore(run_dir)).groupby("tau").n_errors.sum()                 # doctest: +SKIP
    """
    steps = store.steps_by_record()
    rows = []
    for r in store.records:
        params = r.get("params", {})
        tau = (taus or {}).get(r["policy"]) if taus is not None else params.get(
            "tau_trust", params.get("base_params", {}).get("tau_trust"))
        key = (r["prompt_id"], r["policy"])
        if tau is None or not tau < 1 or key not in steps:  # tau_trust = 1 never trusts: not a candidate
            continue
        n, e = trust_counts(steps[key])
        rows.append((r["prompt_id"], r["policy"], float(tau), n, e, r["stats"]["new_tokens"],
                     r["stats"]["target_forwards"]))
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
