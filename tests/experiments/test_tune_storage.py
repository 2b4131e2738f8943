"""Shared and resumed studies: two ``python -m experiments.tune`` workers on one journal file, and on a real
PostgreSQL server on loopback, finish their trials together with none lost or duplicated; an interrupted study
resumes where it stopped. Workers tune on a synthetic trace (no model), so each costs only its start-up.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir

from experiments.common import CONF_DIR
from experiments.tune import execute as run_tune
from specpolicy.replay import synthetic_trace

ROOT = Path(__file__).resolve().parents[2]
PER_WORKER = 6


@pytest.fixture(scope="module")
def syn_path(tmp_path_factory):
    return synthetic_trace(8, 40, 6, seed=2).save(tmp_path_factory.mktemp("trace") / "trace.safetensors")


def tune_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="tune"):
        return compose("tune", overrides=list(overrides))


def run_workers(storage: str, trace: Path, tmp_path: Path, n_workers: int = 2) -> None:
    """Start ``n_workers`` tune processes at once on one study; wait for all; each must exit 0."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "experiments.tune", f"trace={trace}", f"study.storage={storage}", "study.name=shared",
         f"study.n_trials={PER_WORKER}", "study.population_size=4", f"study.seed={w}", "study.remeasure_prompts=0",
         "threads=1", f"hydra.run.dir={tmp_path / f'worker{w}'}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(n_workers)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]


def check_shared(storage, n: int) -> None:
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    assert sorted(t.number for t in trials) == list(range(n))  # none lost, none duplicated
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(len(t.values) == 2 and "figures" in t.user_attrs for t in trials)


@pytest.mark.slow
def test_two_workers_share_a_journal(tmp_path, syn_path):
    journal = tmp_path / "study.log"
    run_workers(f"journal:{journal}", syn_path, tmp_path)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    check_shared(storage, 2 * PER_WORKER)


def test_interrupted_study_resumes(tmp_path, syn_path):
    url = f"sqlite:///{tmp_path / 'resume.db'}"
    common = (f"trace={syn_path}", f"study.storage={url}", "study.name=resumed", "study.remeasure_prompts=0",
              "study.population_size=4")
    run_tune(tune_cfg(*common, "study.n_trials=5"), tmp_path / "a")
    run_tune(tune_cfg(*common, "study.n_trials=4", "study.seed=1"), tmp_path / "b")
    trials = optuna.load_study(study_name="resumed", storage=url).trials
    assert sorted(t.number for t in trials) == list(range(9))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def test_max_trials_caps_the_study_across_runs(tmp_path, syn_path):
    journal = tmp_path / "cap.log"
    common = (f"trace={syn_path}", f"study.storage=journal:{journal}", "study.name=cap", "study.remeasure_prompts=0",
              "study.max_trials=7", "study.n_trials=5")
    run_tune(tune_cfg(*common), tmp_path / "a")
    run_tune(tune_cfg(*common), tmp_path / "b")  # would run 5 more; the cap stops it at 7 in all
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    assert len(optuna.load_study(study_name="cap", storage=storage).trials) == 7


# ---------------------------------------------------------------- a throwaway PostgreSQL cluster on loopback

def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) + sorted(glob.glob(f"/usr/pgsql-*/bin/{name}"))
    return hits[-1] if hits else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """initdb + pg_ctl start on 127.0.0.1:<free port>; yields a SQLAlchemy URL; stops and deletes on teardown.

    PostgreSQL refuses to run as root: as root the cluster belongs to an unprivileged user (``postgres`` if it
    exists, else ``nobody``) and the commands run through ``runuser``. The directory sits in /tmp (pytest's
    tmp_path lives under a 0700 root-owned directory that user could not enter).
    """
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin")
    pytest.importorskip("psycopg2", reason="psycopg2 (the dev extra's psycopg2-binary) is not installed")
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="specpolicy-pg-"))
    if os.geteuid() == 0:
        import pwd

        user = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
        if user is None or not shutil.which("runuser"):
            pytest.skip("running as root without an unprivileged user (postgres/nobody) or runuser to own the cluster")
        pw = pwd.getpwnam(user)
        os.chown(base, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", user, "--"]
    os.chmod(base, 0o755)
    data, port = base / "data", _free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True, timeout=120)

    run(initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
    run(pg_ctl, "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "60", "-o",
        f"-h 127.0.0.1 -p {port} -k {base} -F", "start")
    try:
        import psycopg2

        for _ in range(50):
            try:
                con = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
                break
            except psycopg2.OperationalError:
                time.sleep(0.2)
        con.autocommit = True
        con.cursor().execute("CREATE DATABASE optuna")
        con.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True,
                       timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.mark.slow
def test_two_workers_share_a_postgres_study(tmp_path, syn_path, postgres_url):
    run_workers(postgres_url, syn_path, tmp_path)
    check_shared(postgres_url, 2 * PER_WORKER)


def test_postgres_url_without_driver_suffix(tmp_path, syn_path, postgres_url):
    """``postgresql://`` works with psycopg2 alone (SQLAlchemy 2.1 would otherwise look for psycopg 3)."""
    plain = postgres_url.replace("postgresql+psycopg2://", "postgresql://")
    run_tune(tune_cfg(f"trace={syn_path}", f"study.storage={plain}", "study.name=plain", "study.n_trials=3",
                      "study.remeasure_prompts=0"), tmp_path)
    assert len(optuna.load_study(study_name="plain", storage=postgres_url).trials) == 3
