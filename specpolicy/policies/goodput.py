"""``goodput``: cost-aware drafting -- draft one more token only while that raises committed tokens per unit time.

With m drafts d_1..d_m, a per-depth acceptance estimate a_j (below) and the relative step cost T(m) =
t_step(m) / t_step(0) (``step_cost``), the expected tokens the step commits and its goodput are

    P_i = a_1 * ... * a_i              (d_1..d_i all accepted; a trusted draft has a_j = 1)
    E(m) = 1 + P_1 + ... + P_m         (accepted drafts + the target's token)
    G(m) = E(m) / T(m)

and the policy extends while a deeper block has a higher expected goodput than stopping now:

    extend at depth m  iff  m < min(k_max, budget)  and  G(m + h) > G(m) for some h = 1..lookahead

(``lookahead = 1``: one more draft, E(m+1) = E(m) + P_m * a_{m+1}; the default 4 also sees past a step in the cost,
e.g. a first draft that costs more than the next ones.) Otherwise it VERIFYs (lossless), or, with
``tau_trust < 1``, TRUSTs the longest prefix whose confidences are all >= tau_trust, exactly as ``threshold`` does.
This is the optimal-stopping rule of SpecDec++ (Huang et al., 2024, "SpecDec++: Boosting Speculative Decoding via
Adaptive Candidate Lengths", arXiv:2405.19715): stop once the probability that every candidate so far is accepted,
P_m, is too small for one more candidate to pay -- here the bar is set by the measured cost of a longer block
(P_m * a_{m+1} > E(m) * (T(m+1) / T(m) - 1)) instead of a tuned threshold, and decided per step.

Acceptance estimate at depth j (conditional on d_1..d_{j-1} accepted), from two sources mixed by ``weight``:

    r_j = (accepted_j + prior_accept * prior_n) / (attempted_j + prior_n)     a Beta(prior_accept * prior_n,
          (1 - prior_accept) * prior_n) prior per depth, updated by this generation's counts (``StepState.stats``,
          which the step core updates after every ``observe``, identically in the decoder and the replay),
          raised to its upper confidence bound  min(1, r_j + explore * sqrt(r_j (1 - r_j) / (attempted_j + prior_n)))
          (optimism in the face of uncertainty: counts only grow at depths the policy drafts, so without the bonus,
          ``explore=0``, a prior below the real acceptance can stop drafting for the whole generation);
    a_j = weight * c_j ** gamma + (1 - weight) * r_j         for a drafted d_j with confidence c_j;
    a_{m+h} = weight * c_m ** gamma + (1 - weight) * r_{m+h}  for depths not drafted yet (the last confidence
          stands in for the next ones; at m = 0 there is none and a_h = r_h).

``gamma`` maps the raw q(d_j) towards P(accept) (1 for calibrated confidences, ``policy=calibrated base=goodput``).

The cost model is plain numbers (policies import nothing of ours): ``step_cost[m]`` = t_step(m) / t_step(0) for
m = 0..K, linearly extrapolated past its end (slope of its last two entries, at least 0). ``step_cost=None`` means
"the cost model of where it runs": ``replay`` fills it from the trace's cost model, ``experiments.run`` from the
measured one (``with_step_cost``); a bare ``generate`` uses ``NOMINAL_STEP_COST``. Nothing is timed inside
``decide``: the same numbers in a real run and in its replay give the same decisions.

Example:
    >>> from specpolicy.policies import StepState
    >>> p = GoodputPolicy(step_cost=(1.0, 1.2, 1.4), weight=1.0)
    >>> p.decide(StepState(drafts=(4,), confidence=(0.9,))).kind.value        # G(2) = 2.71/1.4 > G(1) = 1.9/1.2
    'extend'
    >>> p.decide(StepState(drafts=(4,), confidence=(0.1,))).kind.value        # G(2) = 1.11/1.4 < G(1) = 1.1/1.2
    'verify'
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from specpolicy.policies.base import _EXTEND, _VERIFY, Action, Policy, StepState
from specpolicy.policies.registry import MAX_DEPTH, PolicyParamError, check_param, register_policy

__all__ = ["NOMINAL_STEP_COST", "GoodputPolicy", "relative_step_cost", "step_cost_missing", "with_step_cost"]

# A nominal profile for a bare ``generate`` (no cost model given): each draft adds 0.4 of an ``ar`` step, roughly the
# embedded model on a CPU (issue 13: drafting 0.31 of a target forward per depth, plus the longer verify forward).
NOMINAL_STEP_COST = (1.0, 1.4)
_MAX_COST_LEN = 4 * MAX_DEPTH + 4
_TABLE_ROWS = 512  # rate table rows (attempted counts) computed at once: ~131k entries; later rows lazily


def _cost_table(step_cost, n: int) -> tuple[float, ...]:
    """T(0..n-1): ``step_cost`` extended linearly past its end (slope of its last two entries, at least 0)."""
    t = list(step_cost[:n])
    slope = max(step_cost[-1] - step_cost[-2], 0.0)
    while len(t) < n:
        t.append(step_cost[-1] + (len(t) - len(step_cost) + 1) * slope)
    return tuple(t)


def _bounds(t: tuple, k_max: int, lookahead: int) -> tuple[tuple[float, ...], ...]:
    """``[d][H]``: a bound under which no h = 2..H lifts G(d + h) above G(d) (``GoodputPolicy._stop``), for d < k_max.

    Every a_j <= 1 (confidences and rates are probabilities), so E(d + h) <= E(d) + h * p with p = P_d * a_{d+1} (the h = 1 term), and G(d + h) <= G(d) for
    every h = 2..H once p <= E(d) * min_h (T(d + h) - T(d)) / (h * T(d)). The bound is that minimum less a margin of
    1e-12 T (float rounding in the rule's sums is ~1e-16 of them), so it only skips a look-ahead whose answer is
    "stop"; [d][1] is +inf (no look-ahead to skip), a non-positive bound never skips."""
    eps, out = 1e-12, []
    for d in range(k_max):
        td, row, low = t[d], [math.inf, math.inf], math.inf
        for h in range(2, min(lookahead, k_max - d) + 1):  # the rule looks no further than k_max
            low = min(low, (t[d + h] * (1 - eps) - td * (1 + eps)) / (h * td))
            row.append(low)
        out.append(tuple(row))
    return tuple(out)


def _check_step_cost(value) -> tuple[float, ...] | None:
    allowed = ("null (the cost model of where it runs) or a list of >= 2 positive numbers: t_step(m) / t_step(0) "
               f"for m = 0, 1, ... (at most {_MAX_COST_LEN})")
    if value is None:
        return None
    if isinstance(value, str | bytes | Mapping) or not hasattr(value, "__len__"):
        raise PolicyParamError(f"goodput: step_cost={value!r} is not a list of numbers; allowed: {allowed}")
    items = list(value)
    ok = 2 <= len(items) <= _MAX_COST_LEN and all(
        isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) and x > 0 for x in items)
    if not ok:
        raise PolicyParamError(f"goodput: step_cost={items!r} is invalid; allowed: {allowed}")
    return tuple(float(x) for x in items)


def _rate(a: int, n: int, prior_accept: float, prior_n: float, explore: float) -> float:
    """r for a accepted of n attempted (module docstring), in the arithmetic ``GoodputPolicy._grow`` tables."""
    total = n + prior_n
    r = (a + prior_accept * prior_n) / total
    if explore:
        r = min(1.0, r + explore * math.sqrt(max(r * (1.0 - r), 0.0) / total))
    return r


class _LazyRow(dict):
    """Row n of ``GoodputPolicy``'s rate table past ``_TABLE_ROWS``: ``row[a]`` = scale * r(a, n), computed when
    first read (``prior``: prior_accept, prior_n, explore)."""

    __slots__ = ("n", "prior", "scale")

    def __init__(self, n: int, scale: float, prior: tuple[float, float, float]) -> None:
        super().__init__()
        self.n, self.scale, self.prior = n, scale, prior

    def __missing__(self, a: int) -> float:
        value = self[a] = self.scale * _rate(a, self.n, *self.prior)
        return value


@register_policy
class GoodputPolicy(Policy):
    """Extend while one more draft (or up to ``lookahead`` more) raises the expected committed tokens per unit time
    under ``step_cost``; then verify (lossless), or trust the prefix >= ``tau_trust`` when ``tau_trust < 1``."""

    name = "goodput"

    def __init__(self, step_cost=None, gamma: float = 1.0, weight: float = 0.9, prior_accept: float = 0.7,
                 prior_n: float = 4.0, lookahead: int = 4, k_max: int = 8, tau_trust: float = 1.0,
                 explore: float = 1.0) -> None:
        self.step_cost = _check_step_cost(step_cost)
        self.gamma = check_param(self.name, "gamma", gamma, 0.01, 100)
        self.weight = check_param(self.name, "weight", weight, 0, 1)
        self.prior_accept = check_param(self.name, "prior_accept", prior_accept, 0, 1)
        self.prior_n = check_param(self.name, "prior_n", prior_n, 0.01, None)
        self.lookahead = check_param(self.name, "lookahead", lookahead, 1, MAX_DEPTH, integer=True)
        self.k_max = check_param(self.name, "k_max", k_max, 1, MAX_DEPTH, integer=True)
        self.tau_trust = check_param(self.name, "tau_trust", tau_trust, 0, 1)
        self.explore = check_param(self.name, "explore", explore, 0, 10)
        self._t = _cost_table(self.step_cost or NOMINAL_STEP_COST, MAX_DEPTH + 2)  # T(0..MAX_DEPTH+1)
        self._bound = _bounds(self._t, self.k_max, self.lookahead)  # skips look-aheads that cannot extend
        self._step = None  # the stats of the step being drafted (the table reaches their counts)
        self._table: tuple[list, list] = ([], [])  # [n][a]: r and (1 - w) r for a accepted of n attempted; built
        # when first read (``_grow``): a policy only configured (a replay's or a study's copy) costs no table

    @property
    def lossless(self) -> bool:
        return self.tau_trust >= 1 and self.acceptance is None

    def decide(self, state: StepState) -> Action:
        m = len(state.drafts)
        limit = self.k_max if self.k_max < state.budget else state.budget
        if m < limit and self._stop(state.confidence, state.stats, m, limit, m) > m:
            return _EXTEND
        return self._final(state.confidence, m)

    def decide_chain(self, state: StepState, chain: tuple) -> tuple[int, Action]:
        """The whole draft phase from ``state`` with the drafts d_1..d_n known in advance (``Policy.decide_chain``):
        one pass over the rule ``decide`` applies depth by depth, each depth reading the confidences up to it.

        From no draft and lossless (the replay's case), the rule of ``_stop`` in its own loop: the same arithmetic in
        the same order, without the branches for drafts before m and for trusted drafts; at d = n it stops (past d_n
        the drafter has nothing, whatever the rule says there), while its look-ahead still reaches the limit. It
        reads the rate table unchecked: an IndexError means the table must grow first (``_fit``)."""
        conf = chain[1]
        limit, n = (self.k_max if self.k_max < state.budget else state.budget), len(conf)
        if state.drafts or self.tau_trust < 1:
            m = len(state.drafts)
            stop = self._stop(conf, state.stats, m, limit, n) if m < limit else m
            stop = n if stop > n else stop  # it would extend past the last known draft: the drafter has no more
            return stop, (_VERIFY if self.tau_trust >= 1 else self._final(conf, stop))
        if limit <= 0 or not n:
            return 0, _VERIFY
        stats = state.stats
        att, acc = stats.attempted, stats.accepted
        rate, wr = self._table
        L, w, g, t, ahead, bound = len(att), self.weight, self.gamma, self._t, self.lookahead, self._bound
        try:
            r = rate[att[0]][acc[0]] if L else rate[0][0]  # the rule at d = 0 reads r_1 unweighted,
            rw = wr[att[0]][acc[0]] if L else wr[0][0]  # a_1 = w c_1^g + (1 - w) r_1
            p, e, last, d, a, end = 1.0, 1.0, 0.0, 0, rate, (limit if limit < n else n)
            while True:  # the rule at depth d
                pj = p * (last + r)
                ej, td = e + pj, t[d]
                if ej * td <= e * t[d + 1]:
                    top, j = (d + ahead if d + ahead < limit else limit), d + 1
                    if pj <= e * bound[d][top - d]:
                        return d, _VERIFY
                    while j < top:
                        pj *= last + (a[att[j]][acc[j]] if j < L else a[0][0])
                        ej += pj
                        j += 1
                        if ej * td > e * t[j]:
                            break
                    else:
                        return d, _VERIFY
                c = conf[d]
                last = w * (c if g == 1.0 else c ** g)
                p *= last + rw
                e += p
                d += 1
                if d == end:
                    return d, _VERIFY
                r = rw = wr[att[d]][acc[d]] if d < L else wr[0][0]
                a = wr
        except IndexError:  # the rate table does not reach the counts yet (the first call: it is empty)
            if not self._fit(att):
                raise
            return self.decide_chain(state, chain)

    def _final(self, conf: tuple, m: int) -> Action:
        """The action that ends a draft phase at depth m: VERIFY, or TRUST the prefix >= tau_trust."""
        if m == 0 or self.tau_trust >= 1:
            return _VERIFY
        tau, t = self.tau_trust, 0
        while t < m and conf[t] >= tau:
            t += 1
        return Action.trust([True] * t + [False] * (m - t))  # all False -> VERIFY

    def _stop(self, conf: tuple, stats, m: int, limit: int, n: int) -> int:
        """The first depth d in m..n at which the rule stops extending (d = limit, or G(d + h) <= G(d) for every
        h = 1..min(lookahead, limit - d): module docstring); n + 1 if it extends at every depth m..n. ``conf`` holds
        c_1..c_n; the rule at depth d reads c_1..c_d only."""
        att, acc = stats.attempted, stats.accepted  # r_{j+1} = rate[att[j]][acc[j]]; past their end, rate[0][0]
        if self._step is not stats:  # a new step (stats are immutable): the table must reach its counts
            self._fit(att)
            self._step = stats
        rate, wr = self._table
        L = len(att)  # (no padding to k_max: a new tuple per step cost more than a comparison per depth read)
        w, g, tau, t, ahead, bound = self.weight, self.gamma, self.tau_trust, self._t, self.lookahead, self._bound
        p, e, trusting, last, d = 1.0, 1.0, tau < 1, 0.0, 0  # P_d, E(d), still trusting, w c_d^g
        a = rate  # a_{j+1} of a depth not drafted yet: last + a[att[j]][acc[j]] (at d = 0: 0.0 + r_{j+1}, = r_{j+1})
        while d < limit:
            if d >= m:  # the rule at depth d (E(m) is accumulated over the drafts so far first)
                r = a[att[d]][acc[d]] if d < L else a[0][0]  # (1 - w) r_{d+1}, or r_1 at d = 0
                pj = p * (last + r)  # h = 1 first: where the rule extends, it mostly pays at once
                ej, td = e + pj, t[d]
                if ej * td <= e * t[d + 1]:  # G(d + 1) <= G(d): look further, h = 2..min(lookahead, limit - d)
                    top, j = (d + ahead if d + ahead < limit else limit), d + 1
                    if pj <= e * bound[d][top - d]:  # no h can pay (``_bounds``): the look-ahead would stop too
                        return d
                    while j < top:
                        pj *= last + (a[att[j]][acc[j]] if j < L else a[0][0])
                        ej += pj
                        j += 1
                        if ej * td > e * t[j]:  # G(j) > G(d)
                            break
                    else:
                        return d
                if d == n:
                    return n + 1
                if not d:  # the rule read r_1 unweighted
                    r = wr[att[0]][acc[0]] if L else wr[0][0]
            else:
                r = wr[att[d]][acc[d]] if d < L else wr[0][0]
            c = conf[d]  # draft d+1: a_{d+1} = w c^g + (1 - w) r_{d+1}, or 1 while trusted
            last, a = w * (c if g == 1.0 else c ** g), wr
            if trusting and c >= tau:
                e += p  # a trusted draft is committed whatever its verdict
            else:
                trusting = False
                p *= last + r
                e += p
            d += 1
        return d

    def _fit(self, att: tuple) -> bool:
        """Grow the rate table to reach the attempted counts ``att`` (``_grow``); whether it had to."""
        if self._table[0] and not (att and max(att) >= len(self._table[0])):
            return False
        self._grow(max(att) if att else 0)
        return True

    def _grow(self, n: int) -> None:
        """Extend the table of r (module docstring: with its exploration bonus) and (1 - w) r through n attempted
        (at least doubling it; 64 rows at first): rows n' < ``_TABLE_ROWS`` hold a = 0..n' accepted, computed at
        once; rows past it (long generations) compute an entry when first read (``_LazyRow``), so the table stays
        small."""
        rate, wr = self._table
        lo, hi = len(rate), max(n + 1, 2 * len(rate), 64)
        pn, w1 = self.prior_n, 1.0 - self.weight
        full = min(hi, _TABLE_ROWS)
        if lo < full:  # the arithmetic of ``_rate``, elementwise over the rows lo..full-1 (the same bits)
            total = np.arange(lo, full, dtype=np.float64)[:, None] + pn
            r = (np.arange(full, dtype=np.float64)[None, :] + self.prior_accept * pn) / total
            if self.explore:
                r = np.minimum(1.0, r + self.explore * np.sqrt(np.maximum(r * (1.0 - r), 0.0) / total))
            for k, (row, wrow) in enumerate(zip(r.tolist(), (w1 * r).tolist()), lo):
                rate.append(row[: k + 1])
                wr.append(wrow[: k + 1])
        prior = (self.prior_accept, pn, self.explore)
        for k in range(max(lo, full), hi):
            rate.append(_LazyRow(k, 1.0, prior))
            wr.append(_LazyRow(k, w1, prior))

    @classmethod
    def search_space(cls, trial) -> dict[str, Any]:
        """``gamma`` in [0.25, 4] (log), ``weight`` and ``prior_accept`` in [0, 1], ``prior_n`` in [0.5, 64] (log),
        ``lookahead`` in 1..4, ``k_max`` in 1..16, ``tau_trust`` in [0.5, 1], ``explore`` in [0, 3]. ``step_cost`` is
        measured, not tuned.

        To tune the lossless variant only, pin ``tau_trust=1`` (``optuna.samplers.PartialFixedSampler``).

        Example:
            >>> import optuna
            >>> point = {"gamma": 1.0, "weight": 0.9, "prior_accept": 0.7, "prior_n": 4.0, "lookahead": 4,
            ...          "k_max": 8, "tau_trust": 1.0, "explore": 1.0}
            >>> GoodputPolicy.search_space(optuna.trial.FixedTrial(point)) == point
            True
        """
        return {
            "gamma": trial.suggest_float("gamma", 0.25, 4.0, log=True),
            "weight": trial.suggest_float("weight", 0.0, 1.0),
            "prior_accept": trial.suggest_float("prior_accept", 0.0, 1.0),
            "prior_n": trial.suggest_float("prior_n", 0.5, 64.0, log=True),
            "lookahead": trial.suggest_int("lookahead", 1, 4),
            "k_max": trial.suggest_int("k_max", 1, MAX_DEPTH),
            "tau_trust": trial.suggest_float("tau_trust", 0.5, 1.0),
            "explore": trial.suggest_float("explore", 0.0, 3.0),
        }


def relative_step_cost(cost, k: int = MAX_DEPTH) -> tuple[float, ...]:
    """``(t_step(m) / t_step(0) for m = 0..k)`` from any cost model with ``step_s(m)`` (seconds of a step with m
    drafts, e.g. ``specpolicy.decoding.cost.CostModel``), rounded to 6 decimals: a ``step_cost`` for ``goodput``.

    Example:
        >>> class Linear:
        ...     def step_s(self, m): return 0.01 + 0.003 * m
        >>> relative_step_cost(Linear(), 2)
        (1.0, 1.3, 1.6)
    """
    t0 = cost.step_s(0)
    if not (isinstance(t0, numbers.Real) and t0 > 0):
        raise PolicyParamError(f"goodput: the cost model's step_s(0)={t0!r} is not a positive number of seconds")
    return tuple(round(cost.step_s(m) / t0, 6) for m in range(k + 1))


def _filled(params: dict, cost) -> dict | None:
    """``params`` with every ``step_cost: None`` (also inside ``base_params``) filled from ``cost``; None if none."""
    out, changed = dict(params), False
    if "step_cost" in out and out["step_cost"] is None:
        out["step_cost"], changed = relative_step_cost(cost, int(out.get("k_max", MAX_DEPTH))), True
    inner = out.get("base_params")
    if isinstance(inner, Mapping):
        sub = _filled(dict(inner), cost)
        if sub is not None:
            out["base_params"], changed = sub, True
    return out if changed else None


def step_cost_missing(params: Mapping) -> bool:
    """Whether policy parameters hold a ``step_cost`` left None (also inside ``base_params``): a cost model must
    fill it (``with_step_cost``) for the policy to use the costs of where it runs.

    Example:
        >>> step_cost_missing(GoodputPolicy().params()), step_cost_missing({"base_params": {"step_cost": [1, 2]}})
        (True, False)
    """
    inner = params.get("base_params")
    return ("step_cost" in params and params["step_cost"] is None) or (
        isinstance(inner, Mapping) and step_cost_missing(inner))


def with_step_cost(policy: Policy, cost) -> Policy:
    """``policy`` with its ``step_cost`` (a parameter left None, also a ``calibrated`` policy's base's) filled from
    ``cost`` (anything with ``step_s(m)``); the same object when there is nothing to fill.

    Use the returned policy for the real run and for its replay alike: the same numbers, the same decisions.

    Example:
        >>> class Linear:
        ...     def step_s(self, m): return 0.01 + 0.003 * m
        >>> with_step_cost(GoodputPolicy(k_max=2), Linear()).step_cost
        (1.0, 1.3, 1.6)
        >>> p = GoodputPolicy(step_cost=(1.0, 2.0)); with_step_cost(p, Linear()) is p
        True
    """
    params = _filled(policy.params(), cost)
    return policy if params is None else type(policy)(**params)
