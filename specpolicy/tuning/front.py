"""The front of a finished study, and re-measuring it by real decoding (replay vs real, trial by trial).

Example:
    >>> front = front_trials(study, "multi", epsilon=0.01)
    >>> print(front_table(front, "speedup"))
    >>> rows = remeasure_trials("threshold", spread(front, 12), trace, model, n_prompts=5)
"""

from __future__ import annotations

import json

import optuna

from specpolicy.metrics.pareto import pareto_mask
from specpolicy.policies import get_policy

__all__ = ["front_trials", "front_table", "remeasure_table", "remeasure_trials", "spread"]


def front_trials(study: optuna.Study, mode: str, epsilon: float) -> list:
    """multi: Optuna's Pareto set; constrained: the non-dominated (speed, error) trials among the feasible ones.
    Duplicate parameter sets are kept once; sorted by error, then speed (descending)."""
    if mode == "multi":
        trials = study.best_trials
    else:
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        feas = [t for t in done if t.user_attrs.get("lossy_error_rate", 1) <= epsilon]
        mask = pareto_mask([t.value for t in feas], [t.user_attrs["lossy_error_rate"] for t in feas])
        trials = [t for t, keep in zip(feas, mask) if keep]
    seen, out = set(), []
    for t in sorted(trials, key=lambda t: (t.user_attrs["lossy_error_rate"], -t.values[0], t.number)):
        key = json.dumps(t.params, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def spread(items: list, k: int) -> list:
    """At most ``k`` of ``items``, evenly spaced along them (the first and the last included)."""
    if len(items) <= k:
        return list(items)
    step = (len(items) - 1) / (k - 1) if k > 1 else 0
    return [items[round(i * step)] for i in range(k)] if k > 1 else items[:1]


def front_table(trials: list, metric: str) -> str:
    """The front as a fixed-width table: trial, speed, error, TPF, parameters."""
    lines = [f"{'trial':>6}  {metric:>8}  {'error':>7}  {'tpf':>6}  params"]
    for t in trials:
        u = t.user_attrs
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        lines.append(f"{t.number:>6}  {t.values[0]:>8.3f}  {u['lossy_error_rate']:>7.4f}  {u['tpf']:>6.3f}  {params}")
    return "\n".join(lines)


def remeasure_trials(name: str, trials: list, trace, model, n_prompts: int) -> list[dict]:
    """Decode Optuna trials of policy ``name`` for real on the first ``n_prompts`` trace prompts and replay the
    same prompts: one ``compare`` row per trial, plus its number, parameters and objective values."""
    from specpolicy.replay.compare import compare_row, decode_real

    sub = trace.select(range(min(n_prompts, trace.n_prompts)))
    policies = {f"trial {t.number}": get_policy(name, **t.user_attrs["figures"]["policy_params"]) for t in trials}
    results, ar = decode_real(model, sub, policies)
    rows = []
    for t in trials:
        label = f"trial {t.number}"
        row = compare_row(label, policies[label], sub, results[label], ar)
        row.update(trial=t.number, params=json.dumps(t.params, sort_keys=True), objective_speed=t.values[0],
                   objective_error=t.user_attrs["lossy_error_rate"], objective_tpf=t.user_attrs["tpf"])
        rows.append(row)
    return rows


def remeasure_table(rows: list[dict]) -> str:
    """Replayed vs real TPF, error and speedup of re-measured trials, one line each."""
    lines = [f"{'trial':>6}  {'TPF replay/real':>17}  {'error replay/real':>19}  {'speedup* replay/real':>22}  "
             f"{'wall speedup':>12}  exact"]
    for r in rows:
        lines.append(f"{r['trial']:>6}  {r['replay_tpf']:>8.3f}/{r['real_tpf']:<8.3f}  "
                     f"{r['replay_error']:>9.4f}/{r['real_error']:<9.4f}  "
                     f"{r['replay_speedup']:>10.3f}/{r['real_speedup_modelled']:<11.3f}  "
                     f"{r['real_speedup_wall']:>12.2f}  {r['prompts_equal']}/{r['prompts']}")
    return "\n".join(lines) + "\n(*modelled with the trace's cost model; wall: decode-phase tokens/s vs ar in the same process, prefill excluded as in the model)"
