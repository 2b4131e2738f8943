"""Helpers for the experiments.run tests: run the app in a subprocess, read a results directory.

Runs use the shipped tiny model with a few short prompts (``SMALL``), so each subprocess costs a few seconds of
imports and model loading plus well under a second of decoding per (prompt, policy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMALL = ["data.n_prompts=2", "data.prompt_tokens=32", "decode.max_new_tokens=16", "threads=1", "bootstrap=200"]


def app_env() -> dict:
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def run_app(*args: str, cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m experiments.run ARGS`` in ``cwd``; returns the completed process (text stdout/stderr)."""
    return subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=cwd, env=app_env(),
                          capture_output=True, text=True, timeout=timeout)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture
def ok():
    """Assert a finished run: exit 0, else show what it printed."""
    def check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
        assert proc.returncode == 0, f"rc={proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        return proc
    return check
