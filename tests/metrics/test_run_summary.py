"""specpolicy.metrics.summary: pooled figures, paired figures against ar, bootstrap intervals, JSON-safe output."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from specpolicy.metrics import acceptance_counts, bootstrap_ci, first_divergence, summarise_policy, summarise_run


def rec(pid: str, policy: str, tokens, forwards: int, wall: float, lossy: int = 0, rejects: int = 0,
        steps: int | None = None, drafted: int = 0, reached=(), ok=(), nll: float | None = None) -> dict:
    """A record as experiments.run writes it (only the fields the summary reads)."""
    tokens = list(tokens)
    r = {
        "prompt_id": pid, "policy": policy, "token_ids": tokens,
        "stats": {"new_tokens": len(tokens), "target_forwards": forwards, "wall_s": wall, "lossy_tokens": lossy,
                  "shadow_rejects": rejects, "steps": forwards - 1 if steps is None else steps, "drafted": drafted},
        "accept_reached": list(reached), "accept_ok": list(ok),
    }
    if nll is not None:
        r["nll_sum"], r["nll_tokens"] = nll, len(tokens)
    return r


def test_first_divergence_edges():
    assert first_divergence([1, 2, 3], [1, 2, 3]) == 3  # equal: the length
    assert first_divergence([1, 2, 3], [1, 9, 3]) == 1
    assert first_divergence([], [4]) == 0
    assert first_divergence([1, 2], [1, 2, 3]) == 2  # a prefix (EOS earlier): the common length
    assert first_divergence([5], [6]) == 0


def test_acceptance_counts_conditional_on_reaching_depth():
    reached, ok = acceptance_counts([(True, True, False), (False,), (True, True, True), ()])
    assert reached == [3, 2, 2]
    assert ok == [2, 2, 1]
    assert acceptance_counts([]) == ([], [])


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    x = np.random.default_rng(1).normal(5.0, 1.0, size=40)
    a = bootstrap_ci(lambda v: v.mean(-1), [x], n_resamples=800, seed=3)
    b = bootstrap_ci(lambda v: v.mean(-1), [x], n_resamples=800, seed=3)
    assert a == b
    assert a[0] < x.mean() < a[1]
    wide = bootstrap_ci(lambda v: v.mean(-1), [x[:8]], n_resamples=800, seed=3)
    assert wide[1] - wide[0] > a[1] - a[0]  # fewer prompts, wider interval


def test_bootstrap_resamples_arrays_together():
    num = np.array([1.0, 2.0, 3.0, 4.0])
    lo, hi = bootstrap_ci(lambda a, b: a.sum(-1) / b.sum(-1), [num, num], n_resamples=200, seed=0)
    assert lo == hi == 1.0  # paired rows: the ratio is 1 in every resample


def test_bootstrap_degenerate_inputs_give_nan():
    assert all(math.isnan(v) for v in bootstrap_ci(lambda a: a.mean(-1), [np.array([])]))
    zeros = np.zeros(5)
    assert all(math.isnan(v) for v in bootstrap_ci(lambda a, b: a.sum(-1) / b.sum(-1), [zeros, zeros]))


def test_pooled_figures_are_ratios_of_sums():
    recs = [rec("a", "p", range(10), 5, 1.0, lossy=2, rejects=1, drafted=8, steps=4),
            rec("b", "p", range(30), 10, 2.0, drafted=9, steps=9)]
    s = summarise_policy(recs, n_resamples=100)
    assert s["tpf"]["value"] == pytest.approx(40 / 15)  # not the mean of 2.0 and 3.0
    assert s["tokens_per_s"]["value"] == pytest.approx(40 / 3.0)
    assert s["target_forwards"]["value"] == pytest.approx(7.5)
    assert s["mean_draft_len"]["value"] == pytest.approx(17 / 13)
    assert s["lossy_token_rate"]["value"] == pytest.approx(2 / 40)
    assert s["lossy_error_rate"]["value"] == pytest.approx(1 / 40)
    assert s["n_prompts"] == 2 and s["new_tokens"] == 40
    assert s["speedup_vs_ar"] is None and s["exact_match_rate"] is None  # no reference given
    assert s["target_nll"] is None  # records without NLL


def test_acceptance_by_depth_pools_over_prompts():
    recs = [rec("a", "p", range(4), 2, 1.0, reached=[4, 2], ok=[2, 1]),
            rec("b", "p", range(4), 2, 1.0, reached=[6], ok=[6])]
    depth = summarise_policy(recs, n_resamples=100)["acceptance_by_depth"]
    assert [d["depth"] for d in depth] == [1, 2]
    assert depth[0]["value"] == pytest.approx(8 / 10) and depth[0]["reached"] == 10
    assert depth[1]["value"] == pytest.approx(0.5) and depth[1]["reached"] == 2


def test_paired_figures_against_the_reference():
    ar = [rec("a", "ar", [1, 2, 3, 4], 5, 2.0), rec("b", "ar", [7, 8, 9], 4, 1.0)]
    pol = [rec("b", "x", [7, 0, 9], 2, 0.25), rec("a", "x", [1, 2, 3, 4], 2, 0.5)]  # another order
    s = summarise_policy(pol, reference=ar, n_resamples=200)
    assert s["exact_match_rate"]["value"] == pytest.approx(0.5)
    assert s["first_divergence"]["value"] == pytest.approx((4 + 1) / 2)
    assert s["speedup_vs_ar"]["value"] == pytest.approx((7 / 0.75) / (7 / 3.0))
    assert s["n_paired"] == 2
    assert s["speedup_vs_ar"]["ci95"][0] <= s["speedup_vs_ar"]["value"] <= s["speedup_vs_ar"]["ci95"][1]


def test_paired_figures_skip_prompts_missing_from_the_reference():
    ar = [rec("a", "ar", [1, 2], 3, 1.0)]
    pol = [rec("a", "x", [1, 2], 2, 0.5), rec("z", "x", [3], 2, 0.5)]
    s = summarise_policy(pol, reference=ar, n_resamples=50)
    assert s["n_paired"] == 1 and s["exact_match_rate"]["value"] == 1.0
    assert s["n_prompts"] == 2


def test_target_nll_is_token_weighted():
    recs = [rec("a", "p", range(2), 2, 1.0, nll=2.0), rec("b", "p", range(8), 2, 1.0, nll=4.0)]
    assert summarise_policy(recs, n_resamples=50)["target_nll"]["value"] == pytest.approx(6 / 10)


def test_summarise_run_labels_reference_and_json():
    records = [rec("a", "ar", [1, 2], 3, 1.0, nll=1.0), rec("a", "fixed", [1, 2], 2, 0.5, reached=[2], ok=[2], nll=1.0),
               rec("a", "threshold", [1, 3], 1, 0.4, lossy=1, rejects=1, reached=[1], ok=[0], nll=2.0)]
    info = {"fixed": {"name": "fixed", "params": {"k": 4}, "role": "baseline", "lossless": True}}
    s = summarise_run(records, reference="ar", n_resamples=50, policies=info)
    assert list(s["policies"]) == ["ar", "fixed", "threshold"]
    assert s["reference"] == "ar" and "greedy" in s["reference_note"]
    assert s["policies"]["fixed"]["params"] == {"k": 4} and s["policies"]["fixed"]["exact_match_rate"]["value"] == 1.0
    assert s["policies"]["threshold"]["exact_match_rate"]["value"] == 0.0
    assert s["policies"]["threshold"]["lossy_error_rate"]["value"] == pytest.approx(0.5)
    # one prompt: the interval of a constant is that constant; NaN never reaches the JSON
    text = json.dumps(s, allow_nan=False)
    assert "NaN" not in text
    sampled = summarise_run(records, reference="ar", sampling=True, n_resamples=10)
    assert "not expected" in sampled["reference_note"]


def test_summarise_run_without_reference():
    s = summarise_run([rec("a", "threshold", [1], 1, 1.0)], reference="ar", n_resamples=10)
    assert s["reference"] is None
    assert s["policies"]["threshold"]["speedup_vs_ar"] is None
