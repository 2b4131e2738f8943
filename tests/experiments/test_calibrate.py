"""``python -m experiments.calibrate``: one-line errors with exit code 2, the full pipeline on a run directory's
steps.parquet, ``install`` into the shipped directory, and ``experiments.run policy=calibrated`` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _cli(module: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _fake_run(run_dir: Path, n_prompts: int = 40, steps: int = 30, k: int = 4, model: str = "tiny") -> Path:
    """A run directory whose steps.parquet holds fixed(k) steps of an over-confident drafter: P(accept) = q^2."""
    from specpolicy.runs.steps import SCHEMA

    rng = np.random.default_rng(0)
    rows = []
    for p in range(n_prompts):
        position = 1
        for s in range(steps):
            q = rng.beta(5, 1.5, k)
            ok = rng.uniform(size=k) < q**2
            walked = int(np.argmin(ok)) + 1 if not ok.all() else k
            rows.append({
                "prompt_id": f"f{p}.py:1", "policy": "fixed", "step": s, "position": position,
                "drafts": rng.integers(0, 100, k).tolist(), "confidence": q.tolist(),
                "entropy": rng.exponential(1.0, k).tolist(), "margin": (q / 2).tolist(), "action": "verify",
                "trusted": [False] * k, "verdicts": ok[:walked].tolist(), "accept_prob": ok[:walked].astype(float).tolist(),
                "accepted": int(ok[:walked].sum()), "committed": [], "provenance": [], "target_tokens": [],
                "draft_s": 0.0, "verify_s": 0.0,
            })  # fmt: skip
            position += int(ok[:walked].sum()) + 1
    run_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), run_dir / "steps.parquet")
    (run_dir / "config.yaml").write_text(f"model:\n  path: {model}\ndecode:\n  temperature: 0.0\n")
    return run_dir


@pytest.fixture(scope="module")
def clis(tmp_path_factory):
    """The command-line runs of this file, started together two at a time (a fresh interpreter is mostly imports
    and the apps run one thread: on the 2-core CI machine two take about the time of one). Yields the fake run
    directory they read and name -> (future ``CompletedProcess``, results directory)."""
    root = tmp_path_factory.mktemp("cli")
    run = _fake_run(root / "fake_run")
    jobs = {
        "bad": ("experiments.calibrate", "alpha=1.5"),
        "pipeline": ("experiments.calibrate", f"source={run}", "n_boot=20"),
        "calibrated": ("experiments.run", "policy=calibrated", "policy.base=threshold",
                       "policy.base_params={tau_trust: 0.9}", "data.n_prompts=2", "decode.max_new_tokens=16",
                       "bootstrap=10", "figure=false", "nll=false"),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield run, {name: (pool.submit(_cli, *args, f"hydra.run.dir={root / name}"), root / name)
                    for name, args in jobs.items()}


def test_bad_input_from_a_fresh_interpreter(clis):
    """The real command line: one line on stderr and nothing else (no import-time warning, no traceback)."""
    future, out_dir = clis[1]["bad"]
    res = future.result()
    assert res.returncode == 2 and res.stderr == "error: alpha=1.5 is invalid; allowed: 0 < alpha < 1\n", res.stderr
    assert not out_dir.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["alpha=1.5"], "error: alpha=1.5 is invalid; allowed: 0 < alpha < 1"),
        (["delta=0"], "error: delta=0.0 is invalid; allowed: 0 < delta < 1"),
        (["source=/no/such/run"], "error: source=/no/such/run: run directory '/no/such/run' does not exist"),
        (["source={empty}"], "has no steps.parquet"),
        (["calibrators=[platy]"], "error: unknown calibrator 'platy'; did you mean 'platt'?"),
        (["source={other}", "install=true"], "error: install=true ships calibrators for the embedded model, greedy"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, message, capsys, monkeypatch):
    """``python -m experiments.calibrate ARGS`` run in this process: ``main()`` checks before Hydra starts."""
    import experiments.calibrate as calibrate

    (tmp_path / "empty").mkdir()
    _fake_run(tmp_path / "other", n_prompts=2, steps=2, model="/some/checkpoint")
    out_dir = tmp_path / "out"
    args = [a.format(empty=tmp_path / "empty", other=tmp_path / "other") for a in args]
    monkeypatch.setattr(sys, "argv", [calibrate.__file__, *args, f"hydra.run.dir={out_dir}"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        calibrate.main()
    err = capsys.readouterr().err
    assert exc.value.code == 2, err[-2000:]
    assert err.count("\n") == 1 and message in err
    assert not out_dir.exists()  # nothing left behind


def test_pipeline_on_a_run_directory(clis):
    run, started = clis
    future, out_dir = started["pipeline"]
    res = future.result()
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"results: {out_dir}" in res.stdout and "trust thresholds" in res.stdout
    report = json.loads((out_dir / "report.json").read_text())
    assert report["prompts"] == 40 and report["split"]["calibration"]["prompts"] == 20
    ece = report["ece_eval"]
    for name in ("platt", "isotonic"):  # q^2 is over-confident: both maps must cut ECE
        assert ece[name]["all"] < 0.6 * ece["raw"]["all"], ece
    assert ece["temperature"]["all"] < ece["raw"]["all"]  # no bias term: it cannot fully undo q^2
    assert ece["platt"]["1"] < 0.05 < ece["raw"]["1"]
    assert "runs of the trusting policy itself" in report["trust"]["skipped"]  # rows alone certify nothing
    assert "trust thresholds: not certified" in res.stdout
    depths = [r["group"] for r in report["calibration_report"]["raw"]]
    assert depths == ["1", "2", "3", "4", "all"]
    assert sorted(p.name for p in out_dir.glob("reliability_depth*.png")) == [f"reliability_depth{j}.png"
                                                                             for j in range(1, 5)]
    assert sorted(p.stem for p in (out_dir / "calibrators").glob("*.json")) == ["identity", "isotonic", "platt",
                                                                                 "temperature"]
    import pandas as pd

    from specpolicy.calibration import load_calibrator, rows_from_run

    rows = pd.read_parquet(out_dir / "rows.parquet")
    assert rows.drop(columns="split").equals(rows_from_run(run))
    assert set(rows["split"]) == {"calibration", "evaluation"}
    assert rows.groupby("prompt_id")["split"].nunique().max() == 1  # split by prompt
    cal = load_calibrator(out_dir / "calibrators" / "platt.json")
    prov = json.loads((out_dir / "calibrators" / "platt.json").read_text())["provenance"]
    assert prov["source"] == str(run) and prov["fitted_on"] == "calibration"
    assert cal.predict([0.8], depth=1)[0] == pytest.approx(0.64, abs=0.05)


def test_install_copies_the_calibrators_to_the_shipped_directory(tmp_path, monkeypatch):
    import experiments.calibrate as calibrate
    from specpolicy.calibration import load_calibrator

    monkeypatch.setattr(calibrate, "SHIPPED_DIR", tmp_path / "shipped")
    run = _fake_run(tmp_path / "run", n_prompts=10, steps=20)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cfg = calibrate.CalibrateConfig(source=str(run), install=True, n_boot=5, figures=False)
    report = calibrate.calibrate(cfg, out_dir)
    assert sorted(Path(p).name for p in report["installed"]) == ["identity.json", "isotonic.json", "platt.json",
                                                                  "temperature.json"]
    for name in ("platt", "isotonic"):
        shipped = load_calibrator(tmp_path / "shipped" / "mtp" / f"{name}.json")  # the rows' drafter
        assert shipped.to_dict() == load_calibrator(out_dir / "calibrators" / f"{name}.json").to_dict()


def test_run_with_the_calibrated_policy(clis):
    """A fresh interpreter knows ``calibrated`` (registered outside ``policies/``) and runs it end to end."""
    future, out_dir = clis[1]["calibrated"]
    res = future.result()
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out_dir / "summary.json").read_text())
    assert "calibrated" in summary["policies"]
    record = next(json.loads(line) for line in (out_dir / "records.jsonl").read_text().splitlines()
                  if json.loads(line)["policy"] == "calibrated")
    assert record["params"] == {"base": "threshold", "calibrator": "platt", "drafter": "mtp",
                                "base_params": {"tau_extend": 0.5, "tau_trust": 0.9, "k_max": 6}}
