"""``python -m experiments.record`` and ``python -m experiments.tune``: the apps end to end, their outputs, and the
one-line errors (exit code 2) for bad input. Tuning runs on synthetic traces (no model) unless it re-measures."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from experiments.common import CONF_DIR, UserError
from experiments.common import compose as compose_checked
from experiments.tune import execute as run_tune
from experiments.tune import validate
from specpolicy.replay import load_trace, replay, synthetic_trace

ROOT = Path(__file__).resolve().parents[2]


def tune_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="tune"):
        return compose("tune", overrides=list(overrides))


def cli(module: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def syn_path(tmp_path_factory):
    return synthetic_trace(12, 48, 8, seed=5).save(tmp_path_factory.mktemp("trace") / "trace.safetensors")


def test_tune_multi_objective(tmp_path, syn_path):
    cfg = tune_cfg(f"trace={syn_path}", "study.n_trials=16", "study.population_size=8", "study.remeasure_prompts=0")
    summary = run_tune(cfg, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"study.db", "trials.csv", "pareto.csv", "pareto.png",
                                                    "summary.json"}
    study = optuna.load_study(study_name="threshold-multi-speedup", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert len(study.trials) == 16 and len(study.directions) == 2
    front = pd.read_csv(tmp_path / "pareto.csv")
    assert set(front["trial"]) <= {t.number for t in study.best_trials} and len(front) >= 1
    trace = load_trace(syn_path)
    for t in study.best_trials:  # the objective is the replay: re-replaying a trial reproduces its values
        s = replay("threshold", trace, **t.user_attrs["figures"]["policy_params"]).summary
        assert t.values == [s["modelled_speedup"], s["lossy_error_rate"]]
    assert json.loads((tmp_path / "summary.json").read_text())["trials_complete"] == summary["trials_complete"] == 16


def test_tune_constrained_tpf_tpe(tmp_path, syn_path):
    cfg = tune_cfg(f"trace={syn_path}", "study=constrained", "study.epsilon=0.01", "study.speed_metric=tpf",
                   "study.n_trials=20", "study.remeasure_prompts=0", "policy=threshold")
    run_tune(cfg, tmp_path)
    study = optuna.load_study(study_name="threshold-constrained-tpf", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE]
    for t in study.trials:
        assert t.constraints == {"lossy_error_rate": pytest.approx(t.user_attrs["lossy_error_rate"] - 0.01)}
        assert t.value == t.user_attrs["tpf"]
    best = study.best_trial
    assert best.user_attrs["lossy_error_rate"] <= 0.01
    feasible = [t for t in study.trials if t.user_attrs["lossy_error_rate"] <= 0.01]
    assert best.value == max(t.value for t in feasible)


def test_fixed_params_pin_the_search(tmp_path, syn_path):
    cfg = tune_cfg(f"trace={syn_path}", "study.n_trials=6", "study.remeasure_prompts=0", "study.sampler=random",
                   "study.fixed_params={tau_trust: 1.0}")
    run_tune(cfg, tmp_path)
    trials = optuna.load_study(study_name="threshold-multi-speedup", storage=f"sqlite:///{tmp_path / 'study.db'}").trials
    assert all(t.params["tau_trust"] == 1.0 and t.values[1] == 0.0 for t in trials)  # lossless: no error


def test_bench_replay(tmp_path, syn_path):
    out = run_tune(tune_cfg(f"trace={syn_path}", "bench_replay=true"), tmp_path)
    assert set(out["policies"]) >= {"ar", "fixed", "threshold"} and (tmp_path / "bench_replay.json").exists()
    assert out["policies"]["ar"]["tpf"] == pytest.approx(1.0)
    assert out["skipped"] == {} and "calibrated" in out["policies"]


def test_bench_replay_skips_policies_fitted_to_another_drafter(tmp_path):
    """A trace of ``mtp-int8``: ``calibrated`` (fitted to ``mtp``) is reported as skipped, every other policy timed."""
    trace = synthetic_trace(6, 24, 4, seed=2)
    trace.meta["drafter"] = "mtp-int8"
    path = trace.save(tmp_path / "int8.safetensors")
    out = run_tune(tune_cfg(f"trace={path}", "drafter=mtp_int8", "bench_replay=true"), tmp_path)
    assert set(out["skipped"]) == {"calibrated"} and "mtp-int8" in out["skipped"]["calibrated"]
    assert {"ar", "fixed", "goodput"} <= set(out["policies"]) and "calibrated" not in out["policies"]
    assert json.loads((tmp_path / "bench_replay.json").read_text())["skipped"] == out["skipped"]


def test_study_settings_must_match_to_resume(tmp_path, syn_path):
    run_tune(tune_cfg(f"trace={syn_path}", "study.n_trials=2", "study.remeasure_prompts=0", "study.name=s"), tmp_path)
    with pytest.raises(UserError, match="objective"):
        run_tune(tune_cfg(f"trace={syn_path}", "study.n_trials=2", "study.remeasure_prompts=0", "study.name=s",
                          "study=constrained"), tmp_path)
    other = synthetic_trace(12, 48, 8, seed=6).save(tmp_path / "other.safetensors")
    with pytest.raises(UserError, match="trace="):
        run_tune(tune_cfg(f"trace={other}", "study.n_trials=2", "study.remeasure_prompts=0", "study.name=s"),
                 tmp_path)
    # trials of another objective definition or package version are never mixed into the study
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}")
    for key, old in (("objective_version", 1), ("specpolicy_version", "0.1.0")):
        saved = study.user_attrs[key]
        study.set_user_attr(key, old)
        with pytest.raises(UserError, match=f"was run with {key}={old}"):
            run_tune(tune_cfg(f"trace={syn_path}", "study.n_trials=2", "study.remeasure_prompts=0", "study.name=s"),
                     tmp_path)
        study.set_user_attr(key, saved)


@pytest.mark.parametrize("args, expected", [
    (["policy=treshold"], "did you mean 'threshold'"),
    (["policy=ar"], "no parameters to tune"),
    (["study=pareto"], "unknown study 'pareto'"),
    (["study.mode=pareto"], "study.mode=pareto is unknown; allowed: multi, constrained"),
    (["study.storage=redis://x"], "is not a storage"),
    (["study.storage=journal:"], "names no file"),
    (["study.sampler=cmaes"], "allowed: nsga2, tpe, random"),
    (["study.fixed_params={k_max: 99}"], "k_max=99 is out of range"),
    (["study.fixed_params={tau: 1}"], "tau not in threshold's search space"),
    (["study.epsilon=2"], "0 <= epsilon <= 1"),
    (["study.n_trials=0"], "n_trials=0 is invalid"),
    (["study.nope=1"], "study.nope"),
])
def test_tune_bad_input(args, expected):
    with pytest.raises(UserError, match=re.escape(expected)):
        validate(compose_checked("tune", args, ("policy", "model", "data", "study")))


def test_tune_bad_trace_or_storage_in_the_app(tmp_path, syn_path):
    with pytest.raises(UserError, match="does not exist"):
        run_tune(tune_cfg("trace=/nonexistent/trace.safetensors", "study.remeasure_prompts=0"), tmp_path)
    with pytest.raises(UserError, match="cannot open"):
        run_tune(tune_cfg(f"trace={syn_path}", "study.remeasure_prompts=0",
                          "study.storage=postgresql://nobody@127.0.0.1:1/none"), tmp_path)


def main_exit(app, argv: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """``python -m experiments.<app> ARGV`` run in this process (``app.main()``, which checks the command line
    before Hydra creates anything): its exit code and what it printed on stderr."""
    monkeypatch.setattr(sys, "argv", [app.__file__, *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        app.main()
    return exc.value.code, capsys.readouterr().err


def test_tune_cli_error_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    import experiments.tune

    code, err = main_exit(experiments.tune, ["policy=treshold", f"hydra.run.dir={tmp_path / 'run'}"], capsys,
                          monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "unknown policy 'treshold'; did you mean 'threshold'?" in err
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def clis(tmp_path_factory, syn_path):
    """The command-line runs of this file, started together two at a time (a fresh interpreter is mostly imports
    and the apps run one thread: on the 2-core CI machine two take about the time of one). Yields the directory
    they write under and name -> future: ``CompletedProcess``, or for "record_tune" (record, then tune on its trace)."""
    root = tmp_path_factory.mktemp("cli")

    def record_then_tune():
        rec = cli("experiments.record", "data.n_prompts=2", "max_new_tokens=10", "probe_depth=3", "cost_reps=2",
                  f"hydra.run.dir={root / 'rec'}", "threads=1")
        if rec.returncode != 0:
            return rec, None
        return rec, cli("experiments.tune", f"trace={root / 'rec' / 'trace.safetensors'}", "study.n_trials=6",
                        "study.population_size=4", "study.remeasure_prompts=2", "study.remeasure_max=2", "threads=1",
                        "study.fixed_params={tau_trust: 1.0}", f"hydra.run.dir={root / 'tune'}")

    with ThreadPoolExecutor(max_workers=2) as pool:
        yield root, {"record_tune": pool.submit(record_then_tune),
                     "synthetic": pool.submit(cli, "experiments.tune", f"trace={syn_path}",
                                              f"hydra.run.dir={root / 'synthetic'}"),
                     "probe_depth": pool.submit(cli, "experiments.record", "probe_depth=0",
                                                f"hydra.run.dir={root / 'probe_depth'}")}


def test_tune_refuses_remeasuring_a_synthetic_trace(clis):
    r = clis[1]["synthetic"].result()
    assert r.returncode == 2 and "synthetic" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_record_bad_input_is_one_line(tmp_path, capsys, monkeypatch, clis):
    r = clis[1]["probe_depth"].result()  # a fresh interpreter
    assert r.returncode == 2 and r.stderr.strip() == "error: probe_depth=0 is invalid; allowed: 1 <= probe_depth <= 32"
    assert not (clis[0] / "probe_depth").exists()
    import experiments.record

    code, err = main_exit(experiments.record, ["model=tinny", f"hydra.run.dir={tmp_path / 'run'}"], capsys,
                          monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "did you mean 'tiny'" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_record_then_tune_with_remeasure_on_the_shipped_model(tmp_path, clis):
    """The whole path on the embedded model: record a small trace, tune on it, re-measure the front for real."""
    root, started = clis
    rec, tune = started["record_tune"].result()
    assert rec.returncode == 0, rec.stderr
    trace = load_trace(root / "rec" / "trace.safetensors")
    assert trace.tokens.shape == (2, 10) and trace.draft.shape == (2, 9, 3)
    assert trace.meta["model"] == "tiny" and trace.meta["data"]["corpus_fingerprint"]
    assert len(trace.cost.t_target) == 4 and trace.cost.t_mtp > 0
    assert tune.returncode == 0, tune.stderr
    assert "Pareto front" in tune.stdout and "re-measuring" in tune.stdout
    front = pd.read_csv(root / "tune" / "pareto.csv")
    assert len(front) >= 1 and front["lossless"].all() and front["exact"].all()  # lossless: replay == real
    assert (front["replay_tpf"] == front["real_tpf"]).all()
    assert (root / "tune" / "pareto.png").stat().st_size > 0
    # the decode evaluator: real decoding per trial; for lossless trials it agrees with the replay exactly
    # in this process (the command line is checked above; tests/conftest.py restores the threads execute() sets)
    run_tune(tune_cfg(f"trace={root / 'rec' / 'trace.safetensors'}", "study.evaluator=decode",
                      "study.decode_prompts=2", "study.n_trials=2", "study.remeasure_prompts=0", "threads=1",
                      "study.fixed_params={tau_trust: 1.0}"), tmp_path / "dec")
    study = optuna.load_study(study_name="threshold-multi-speedup", storage=f"sqlite:///{tmp_path / 'dec' / 'study.db'}")
    for t in study.trials:
        s = replay("threshold", trace, **t.user_attrs["figures"]["policy_params"]).summary
        assert t.values == [s["modelled_speedup"], s["lossy_error_rate"]] and t.user_attrs["tpf"] == s["tpf"]
