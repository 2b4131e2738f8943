"""Bad input to `python -m experiments.run`: exactly one line on stderr, exit code 2, no traceback, and no results
directory left behind.

Every case runs in-process through ``experiments.run.main`` (fast, with the stderr file descriptor captured); a few
also run as real subprocesses, which is what a user sees.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, app_env, run_app

import experiments.run as run_module

CASES = {
    "unknown policy": (["policy=treshold"], "did you mean 'threshold'"),
    "unknown model": (["model=tinyy"], "did you mean 'tiny'"),
    "unknown data": (["data=stdlib"], "did you mean 'stdlib_test'"),
    "unknown drafter": (["drafter=medusaa"], "did you mean 'medusa'"),
    "drafter option": (["drafter=ngram", "drafter.path=x"], "ngram takes no argument"),
    "unknown decode in a sweep": (["--multirun", "decode=greedy,samplin"], "did you mean 'sampling'"),
    "unknown launcher": (["hydra/launcher=jobib"], "Could not find 'hydra/launcher/jobib'"),
    "out of range": (["policy.tau_trust=1.5"], "tau_trust=1.5 is out of range; allowed: 0 <= tau_trust <= 1"),
    "out of range in a sweep": (["--multirun", "policy=fixed", "policy.k=2,17"], "k=17 is out of range"),
    "unknown parameter": (["policy=fixed", "policy.tau_trust=0.9"], "fixed: unknown parameter tau_trust; allowed: k"),
    "misspelt parameter": (["policy.tau_trst=0.9"], "did you mean tau_trust?"),
    "unknown key": (["decode.max_new_token=5"], "did you mean 'decode.max_new_tokens'"),
    "missing model path": (["model=hf", "model.path={tmp}/no_model"], "not found"),
    "model path not given": (["model=hf"], "model.path is missing"),
    "missing prompt file": (["data=file", "data.path={tmp}/nope.jsonl"], "does not exist"),
    "prompt file not given": (["data=file"], "data=file needs data.path"),
    "empty prompt": (["data=file", "data.path={tmp}/empty.jsonl"], "line 2: empty prompt"),
    "max_new_tokens 0": (["decode.max_new_tokens=0"], "max_new_tokens=0 is invalid; allowed: an integer >= 1"),
    "max_new_tokens negative": (["decode.max_new_tokens=-3"], "max_new_tokens=-3 is invalid"),
    "not an int": (["decode.max_new_tokens=many"], "could not be converted to Integer"),
    "run mode with a sweep": (["policy=fixed,threshold"], "add --multirun"),
    "unknown engine": (["decode.engine=fast"], "decode.engine=fast is unknown; allowed: auto, lean, packed"),
    "packed engine in float64": (["decode.engine=packed", "model.dtype=float64"],
                                 "engine='packed' cannot run this target (dtype torch.float64"),
}
SUBPROCESS = ["unknown policy", "out of range", "unknown parameter", "missing model path", "empty prompt",
              "max_new_tokens 0"]


def _args(name: str, tmp_path) -> tuple[list[str], str]:
    (tmp_path / "empty.jsonl").write_text('{"prompt": "import os"}\n{"prompt": ""}\n')
    args, match = CASES[name]
    out = tmp_path / "results"
    return [a.format(tmp=tmp_path) for a in args] + [f"hydra.run.dir={out}", f"hydra.sweep.dir={out}"], match


def _assert_one_line(stderr: str, stdout: str, match: str) -> None:
    assert "Traceback" not in stderr + stdout
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("error: ") and match in stderr, stderr


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_in_process(tmp_path, monkeypatch, capfd, name):
    args, match = _args(name, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["experiments.run", *args])
    with pytest.raises(SystemExit) as exit_info:
        run_module.main()
    assert exit_info.value.code == 2
    out, err = capfd.readouterr()
    _assert_one_line(err, out, match)
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", SUBPROCESS)
def test_bad_input_subprocess(tmp_path, name):
    args, match = _args(name, tmp_path)
    proc = run_app(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    _assert_one_line(proc.stderr, proc.stdout, match)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl"]  # no results, no runs/, no outputs/


def test_error_inside_the_job_removes_its_directory(tmp_path):
    """Past the pre-flight check (as in a long sweep), the job itself refuses, and removes the directory Hydra made."""
    out = tmp_path / "runs" / "run" / "job"
    code = ("import sys, experiments.run as r; r.preflight = lambda *a, **k: None; "
            f"sys.argv = ['run', 'policy.tau_trust=1.5', 'hydra.run.dir={out}']; r.main()")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=app_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    _assert_one_line(proc.stderr, proc.stdout, "tau_trust=1.5 is out of range")
    assert list(tmp_path.iterdir()) == []


def test_help_lists_the_groups():
    proc = run_app("--help", cwd=REPO)
    assert proc.returncode == 0
    policies = sorted(p.stem for p in (run_module.CONF_DIR / "policy").glob("*.yaml"))
    assert {"ar", "fixed", "threshold"} <= set(policies)
    for line in (f"policy: {', '.join(policies)}", "model: hf, tiny", "data: file, package, stdlib_test",
                 "decode: greedy, sampling", "experiment: paper_threshold", "tau_trust: 1.0"):
        assert line in proc.stdout
