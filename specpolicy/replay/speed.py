"""How fast replay runs: ``replay_speed`` times every policy's replay of one trace (what a tuning study pays per
trial). ``python -m experiments.tune bench_replay=true trace=T`` prints it for a trace.

Example:
    >>> out = replay_speed(load_trace("trace.safetensors"), ["fixed", "threshold"], reps=5)
    >>> out["policies"]["threshold"]["steps_per_s"]
"""

from __future__ import annotations

from .simulate import _row_tables, replay
from .trace import Trace

__all__ = ["replay_speed"]


def replay_speed(trace: Trace, names=None, reps: int = 9) -> dict:
    """Seconds to replay each policy (registered names, defaults; all by default) over the whole trace in this
    process, each replay with a new policy object (as a study's trial builds one), in ``reps`` interleaved rounds
    (every policy once per round, so a stretch in which the machine runs slower touches each policy alike): the
    median, microseconds per policy step and policy steps per second; ``first_s``: the first round, which also
    memoises the walks it meets (``simulate._row_tables``); ``min_s`` / ``max_s``: the spread of the rounds.
    ``rows_s``: the one-off conversion of the trace to Python lists and per-row lookup tables, which every later
    replay of the same trace reuses. ``skipped``: {name: why} of the policies the trace cannot serve (fitted to
    another drafter: ``calibrated`` on a trace of ``mtp-int8``), left out rather than failing the whole benchmark.
    A benchmark, not a test: measure on an idle core (``OMP_NUM_THREADS=1 taskset -c N``); on a VM whose speed
    drifts, run it more than once.
    """
    import statistics
    import time

    from specpolicy.policies import get_policy, list_policies

    if not isinstance(reps, int) or reps < 1:
        raise ValueError(f"reps={reps!r} is invalid; allowed: an integer >= 1")
    t0 = time.perf_counter()
    _row_tables(trace)  # the one-off list conversion and lookup tables, timed separately
    out = {"rows_s": time.perf_counter() - t0, "prompts": trace.n_prompts, "tokens": trace.max_new_tokens,
           "reps": reps, "policies": {}, "skipped": {}}
    timed = []
    for name in names or list_policies():
        fitted = get_policy(name).requires_drafter
        if fitted is not None and fitted != trace.drafter:
            out["skipped"][name] = f"fitted to drafter {fitted}, the trace is of {trace.drafter}"
        else:
            timed.append(name)
    names, times, results = timed, {name: [] for name in timed}, {}
    for _ in range(reps):
        for name in names:
            t = time.perf_counter()
            results[name] = replay(name, trace)
            times[name].append(time.perf_counter() - t)
    for name in names:
        med, steps = statistics.median(times[name]), results[name].summary["steps"]
        out["policies"][name] = {"median_s": med, "first_s": times[name][0], "min_s": min(times[name]),
                                 "max_s": max(times[name]), "steps": steps, "tpf": results[name].summary["tpf"],
                                 "us_per_step": 1e6 * med / max(steps, 1),
                                 "steps_per_s": steps / med if med > 0 else float("inf")}
    return out
