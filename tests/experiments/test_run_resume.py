"""A run killed midway (SIGKILL) and resumed with the same hydra.run.dir ends with exactly the records of an
uninterrupted run: same prompts, same tokens, no duplicates, also after a torn last line."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, SMALL, app_env, records, run_app, summary

ARGS = ["policy=threshold", *SMALL, "data.n_prompts=4", "decode.max_new_tokens=24", "figure=false"]


def _key(r: dict) -> tuple[str, str]:
    return r["prompt_id"], r["policy"]


def _start(run_dir, log) -> subprocess.Popen:
    """``experiments.run ARGS`` into ``run_dir`` in the background, its stdout and stderr into the file ``log``."""
    with open(log, "w") as sink:
        return subprocess.Popen([sys.executable, "-m", "experiments.run", *ARGS, f"hydra.run.dir={run_dir}"],
                                cwd=REPO, env=app_env(), stdout=sink, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(tmp_path, ok):
    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    # the uninterrupted reference runs beside the run that is killed and the refused one (threads=1 each)
    ref, proc = _start(ref_dir, tmp_path / "ref.log"), _start(run_dir, tmp_path / "cut.log")
    path, deadline = run_dir / "records.jsonl", time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    head = path.read_bytes()
    n_before = head.count(b"\n")
    assert 3 <= n_before < 12, f"killed with {n_before} records: not midway"
    assert not (run_dir / "summary.json").exists()

    # resuming the killed directory with other settings is refused, and the records stay as they are
    refused = run_app(*ARGS, "decode.max_new_tokens=8", f"hydra.run.dir={run_dir}")
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr[-3000:]
    assert "another configuration" in refused.stderr
    assert path.read_bytes() == head

    with open(path, "ab") as f:  # and a torn line, as a write cut short would leave
        f.write(b'{"prompt_id": "torn", "policy": "ar", "token_i')
    ref.wait(timeout=600)
    assert ref.returncode == 0, (tmp_path / "ref.log").read_text()[-3000:]
    reference = {_key(r): r["token_ids"] for r in records(ref_dir)}
    assert len(reference) == 12

    ok(run_app(*ARGS, f"hydra.run.dir={run_dir}"))
    resumed = records(run_dir)
    keys = [_key(r) for r in resumed]
    assert len(keys) == len(set(keys)) == 12  # no duplicate, nothing missing, the torn line is gone
    assert {k: r["token_ids"] for k, r in zip(keys, resumed)} == reference
    assert path.read_bytes().startswith(head)  # finished lines are never rewritten
    assert summary(run_dir)["policies"]["threshold"]["n_prompts"] == 4
