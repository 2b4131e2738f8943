"""``python -m experiments.replay_report`` end to end (in process) on a small trace of the shipped model: lossless
policies' replay equals real decoding, and each row carries measured, modelled and ceiling speedups from a cost model
read off calibration runs decoded among the policies (written to cost.json with the loop-overhead terms)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from experiments.common import compose

ROOT = Path(__file__).resolve().parents[2]


def test_replay_report_puts_measured_beside_modelled_and_ceiling(tmp_path):
    from experiments.record import execute as record
    from experiments.replay_report import execute as report

    (tmp_path / "rec").mkdir()
    record(compose("record", ["data.n_prompts=2", "max_new_tokens=10", "probe_depth=3", "cost_reps=2", "threads=1"]),
           tmp_path / "rec")
    trace = tmp_path / "rec" / "trace.safetensors"
    (tmp_path / "rep").mkdir()
    report(compose("replay_report", [f"trace={trace}", "threads=1", "cost_reps=2", "sweeps=1",
                                     'policies=["fixed:{\\"k\\":2}",threshold]']), tmp_path / "rep")
    rows = pd.read_csv(tmp_path / "rep" / "replay_report.csv")
    assert list(rows["policy"]) == ["fixed(k=2)", "threshold"] and rows["exact"].all()
    for col in ("speedup_measured", "speedup_modelled", "speedup_ceiling", "speedup_measured_over_modelled"):
        assert (rows[col] > 0).all(), col
    cost = json.loads((tmp_path / "rep" / "cost.json").read_text())
    assert cost["source"] == "interleaved" and len(cost["t_target"]) == 4 and "t_overhead" in cost
    assert "measured / modelled" in (tmp_path / "rep" / "replay_report.md").read_text()
    bad = subprocess.run([sys.executable, "-m", "experiments.replay_report", f"trace={trace}", "cost=guess",
                          f"hydra.run.dir={tmp_path / 'bad'}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["error: cost=guess is unknown; allowed: interleaved, measure, trace"]
