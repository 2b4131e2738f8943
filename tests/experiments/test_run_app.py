"""`python -m experiments.run` end to end on the shipped tiny model (few short prompts): files, summary, console,
baselines, lossless guarantees, sampling, and --multirun through the basic launcher (over the other drafters, one
process shared by the drafter tests) and the joblib launcher.

The basic-launcher runs (``RUNS``) start together when the first test needs one, two at a time: each is
``threads=1``, so on the 2-core CI machine two run side by side in about the time of one.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
from conftest import SMALL, records, run_app, summary

from specpolicy.runs.steps import STEP_COLUMNS

FILES = ("records.jsonl", "steps.jsonl", "steps.parquet", "summary.json", "environment.json", "config.yaml",
         "overview.png", ".hydra/config.yaml")
FIGURES = ("tpf", "tokens_per_s", "speedup_vs_ar", "target_forwards", "mean_draft_len", "acceptance_by_depth",
           "lossy_token_rate", "lossy_error_rate", "exact_match_rate", "first_divergence", "target_nll")
DRAFTERS = ("ngram", "medusa", "draft")
RUNS = {  # name: the command line (without the results directory); "drafters" is one --multirun over DRAFTERS
    "threshold": ("policy=threshold", *SMALL),
    "fixed_k4": ("policy=fixed", "policy.k=4", *SMALL, "data.n_prompts=3", "decode.max_new_tokens=24",
                 "figure=false"),
    "sampling": ("decode=sampling", "decode.temperature=0.8", "policy.tau_trust=0.3", "policy.tau_extend=0.0", *SMALL,
                 "figure=false"),
    "drafters": ("--multirun", "policy=threshold", f"drafter={','.join(DRAFTERS)}", *SMALL, "figure=false"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> (the run's future ``CompletedProcess``, its results directory); all started, two at a time."""
    root = tmp_path_factory.mktemp("runs")
    with ThreadPoolExecutor(max_workers=2) as pool:
        started = {}
        for name, args in RUNS.items():
            where = f"hydra.sweep.dir={root / name}" if args[0] == "--multirun" else f"hydra.run.dir={root / name}"
            started[name] = (pool.submit(run_app, *args, where), root / name)
        yield started


def test_threshold_run_writes_everything(runs, ok):
    future, out = runs["threshold"]
    proc = ok(future.result())
    for f in FILES:
        assert (out / f).is_file(), f
    recs = records(out)
    assert len(recs) == 2 * 3 and len({(r["prompt_id"], r["policy"]) for r in recs}) == 6  # ar, fixed, threshold
    for r in recs:
        assert len(r["token_ids"]) == len(r["provenance"]) == r["stats"]["new_tokens"] <= 16
        assert r["finished_by"] in ("eos", "length") and r["nll_tokens"] == r["stats"]["new_tokens"]
    assert {r["params"].get("k") for r in recs if r["policy"] == "fixed"} == {6}  # fixed at threshold's k_max
    s = summary(out)
    assert list(s["policies"]) == ["ar", "fixed", "threshold"] and s["reference"] == "ar"
    for label, entry in s["policies"].items():
        for key in FIGURES:
            assert key in entry, (label, key)
        assert entry["tpf"]["ci95"][0] <= entry["tpf"]["value"] <= entry["tpf"]["ci95"][1]
    assert s["policies"]["ar"]["tpf"]["value"] == 1.0 and s["policies"]["ar"]["speedup_vs_ar"]["value"] == 1.0
    assert s["policies"]["threshold"]["acceptance_by_depth"][0]["depth"] == 1
    steps = pd.read_parquet(out / "steps.parquet")
    assert tuple(steps.columns) == STEP_COLUMNS
    assert set(steps.policy) == {"ar", "fixed", "threshold"}
    forwards = {(r["prompt_id"], r["policy"]): r["stats"]["steps"] for r in recs}
    assert steps.groupby(["prompt_id", "policy"]).size().to_dict() == forwards  # every step of every record
    env = json.loads((out / "environment.json").read_text())
    for key in ("python", "torch", "transformers", "device", "threads", "git", "corpus_fingerprint",
                "model_fingerprint", "model_card_sha256"):
        assert key in env, key
    assert env["threads"]["torch"] == 1
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["policy", "tpf"] and lines[-1] == f"results: {out}"
    assert [ln.split()[0] for ln in lines[1:4]] == ["ar", "fixed", "threshold"]
    assert "prompts" in proc.stderr  # the tqdm bar


def _assert_lossless(entry: dict, label: str) -> None:
    assert entry["lossless"] is True, label
    assert entry["lossy_token_rate"]["value"] == 0, label
    assert entry["lossy_error_rate"]["value"] == 0, label
    assert entry["exact_match_rate"]["value"] == 1, label  # greedy: token for token the ar output
    assert entry["first_divergence"]["value"] == entry["new_tokens"] / entry["n_prompts"], label


def test_fixed_k4_is_lossless_and_decoded_once(runs, ok):
    future, out = runs["fixed_k4"]
    ok(future.result())
    s = summary(out)
    assert list(s["policies"]) == ["ar", "fixed"]  # the fixed baseline is the policy itself: decoded once
    assert s["policies"]["fixed"]["params"] == {"k": 4} and s["policies"]["fixed"]["role"] == "policy"
    for label, entry in s["policies"].items():
        _assert_lossless(entry, label)


def test_sampling_run_with_a_lossy_policy(runs, ok):
    future, out = runs["sampling"]
    ok(future.result())
    s = summary(out)
    assert "not expected" in s["reference_note"]  # sampled ar is one draw: exact match is no criterion here
    assert "temperature: 0.8" in (out / "config.yaml").read_text()
    p = s["policies"]
    assert p["threshold"]["lossless"] is False
    assert p["threshold"]["lossy_token_rate"]["value"] > 0
    assert 0 <= p["threshold"]["lossy_error_rate"]["value"] <= p["threshold"]["lossy_token_rate"]["value"]
    assert p["ar"]["lossy_token_rate"]["value"] == p["fixed"]["lossy_token_rate"]["value"] == 0
    assert all(r["stats"]["new_tokens"] > 0 for r in records(out))


def test_multirun_basic_launcher(runs, ok):
    future, sweep = runs["drafters"]
    ok(future.result())
    jobs = [f"{i}_threshold" for i in range(len(DRAFTERS))]  # hydra.sweep.subdir: job number and policy name
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == jobs
    for job, drafter in zip(jobs, DRAFTERS):
        assert list(summary(sweep / job)["policies"]) == ["ar", "fixed", "threshold"]
        assert json.loads((sweep / job / "environment.json").read_text())["drafter"] == drafter  # in sweep order
        for label, entry in summary(sweep / job)["policies"].items():
            _assert_lossless(entry, f"{job}/{label}")


@pytest.mark.slow
def test_multirun_joblib_launcher(tmp_path, ok):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    ok(run_app("--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "policy=ar,fixed", *SMALL,
               "data.n_prompts=1", "figure=false", "baselines=false", f"hydra.sweep.dir={sweep}"))
    assert summary(sweep / "0_ar")["policies"].keys() == {"ar"}
    assert summary(sweep / "1_fixed")["policies"].keys() == {"fixed"}
    assert summary(sweep / "1_fixed")["reference"] is None  # baselines=false and not ar itself: nothing paired


@pytest.mark.parametrize("drafter", DRAFTERS)
def test_run_with_another_drafter(runs, ok, drafter):
    """drafter=... chooses the drafter of every arm; lossless arms still match ar; the drafter is recorded."""
    future, sweep = runs["drafters"]
    ok(future.result())
    out = sweep / f"{DRAFTERS.index(drafter)}_threshold"
    s = summary(out)
    assert s["policies"]["fixed"]["exact_match_rate"]["value"] == 1.0
    assert s["policies"]["threshold"]["exact_match_rate"]["value"] == 1.0
    assert json.loads((out / "environment.json").read_text())["drafter"] == drafter
    assert sum(r["stats"]["drafted"] for r in records(out)) > 0
