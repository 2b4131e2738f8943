"""analysis/*.ipynb: thin notebooks that run end to end (nbmake) on generated results, stored without outputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "analysis").glob("*.ipynb"))


def test_three_notebooks_with_a_parameters_cell_and_no_stored_outputs():
    assert {p.stem for p in NOTEBOOKS} == {"calibration", "speed_quality", "policy_behaviour"}
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(params) == 1 and "SPECPOLICY_RESULTS" in "".join(params[0]["source"]), path.name
        code = [c for c in cells if c["cell_type"] == "code"]
        assert all(c["outputs"] == [] and c["execution_count"] is None for c in code), f"{path.name}: strip outputs"


def test_notebooks_execute_on_generated_results(results_root, tmp_path):
    pytest.importorskip("nbmake")
    env = {**os.environ, "SPECPOLICY_RESULTS": str(results_root), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbmake",
                          "--nbmake-timeout=300", *map(str, NOTEBOOKS)], cwd=tmp_path, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert f"{len(NOTEBOOKS)} passed" in out.stdout
    assert all(json.loads(p.read_text())["cells"][1]["outputs"] == [] for p in NOTEBOOKS)  # nbmake leaves files
