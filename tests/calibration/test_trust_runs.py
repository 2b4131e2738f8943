"""Runs of the trusting policy at a grid of taus: arms, a resumable record store, and the per-prompt table whose
counts agree with the step records and with the generation statistics (trusted tokens and their shadow rejects)."""

from types import SimpleNamespace

import pytest

from specpolicy.calibration import certify_trust, trust_arms, trust_counts, trust_plan, trust_table
from specpolicy.runs.records import RecordStore
from specpolicy.runs.runner import decode_run, open_store
from specpolicy.testing.models import small_model

TAUS = (0.05, 0.2)


def _prompts():
    return [SimpleNamespace(id=f"p{i}", ids=tuple(range(3 + i, 9 + i))) for i in range(3)]


def test_trust_runs_table_counts_match_steps_and_stats(tmp_path):
    arms = trust_arms(TAUS, {"tau_extend": 0.1, "k_max": 3})
    assert [a.label for a in arms] == ["trust@0.2", "trust@0.05"] and arms[0].params["tau_trust"] == 0.2
    plan = trust_plan(arms, max_new_tokens=8, n_prompts=3, data_seed=0)
    model = small_model(k=3)
    store = open_store(tmp_path, plan)
    decode_run(plan, model, _prompts(), store, progress=False)
    table = trust_table(store)
    assert len(table) == 6 and set(table["tau"]) == set(TAUS)
    steps = store.steps_by_record()
    for r in store.records:
        row = table[(table.prompt_id == r["prompt_id"]) & (table.policy == r["policy"])].iloc[0]
        n, e = trust_counts(steps[(r["prompt_id"], r["policy"])])
        assert (row.n_trusted, row.n_errors) == (n, e) == (r["stats"]["trusted_tokens"], r["stats"]["trusted_rejects"])
        assert r["stats"]["shadow_rejects"] == e and r["stats"]["relaxed_rejects"] == 0
        assert (e == 0) == (r["stats"]["first_error"] == r["stats"]["new_tokens"])  # greedy: TV bound = rejects
        assert r["stats"]["lossy_tv_bound"] == pytest.approx(e)
    assert table["n_trusted"].sum() > 0  # the small model's drafts are confident enough to trust some
    decode_run(plan, model, _prompts(), RecordStore(tmp_path), progress=False)  # resumed: nothing decoded twice
    assert len(RecordStore(tmp_path).records) == 6
    assert certify_trust(table, 0.05, 0.1).tau is None  # three prompts certify nothing


def test_trust_arms_reject_bad_grids_and_wrap_a_calibrator():
    with pytest.raises(ValueError, match="allowed"):
        trust_arms([1.0])
    cal = trust_arms([0.9], calibrator="identity")[0]
    assert cal.name == "calibrated" and cal.params["base_params"]["tau_trust"] == 0.9
