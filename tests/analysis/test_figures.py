"""analysis: the figure library reads every kind of results directory, skips what is missing, refuses bad input."""

import json

import numpy as np
import pytest

from analysis.acceptance import REFERENCES, acceptance_frame, conditional
from analysis.make_figures import FIGURES, main, make_figures
from analysis.results import ResultsError, find_results, policy_table
from analysis.speed_quality import speed_quality_figure


def test_every_figure_from_every_kind(results_root, tmp_path):
    lines = []
    written = make_figures([results_root], tmp_path, log=lines.append, formats=("png",), dpi=40)
    expected = set(FIGURES) - {"reliability"} | {"reliability_calibrate"}
    assert set(written) == expected, lines
    assert all(p.stat().st_size > 1000 for files in written.values() for p in files)
    captions = json.loads((tmp_path / "captions.json").read_text())
    assert "ROCm/ATOM pull request 1216" in captions["acceptance"]["caption"]
    assert not any(line.startswith("skipped") for line in lines)
    from PIL import Image

    for name, files in written.items():  # printed at natural size in the 6.5 in text width
        width_in = Image.open(files[0]).size[0] / 40
        assert width_in <= 6.3, f"{name} is {width_in:.1f} in wide"


def test_missing_kinds_are_skipped_one_line_each(results_root, tmp_path):
    lines = []
    written = make_figures([results_root / "runs"], tmp_path, log=lines.append, formats=("png",), dpi=40)
    assert {"speed_quality", "acceptance", "draft_lengths", "threshold_sweep"} <= set(written)
    skipped = [line for line in lines if line.startswith("skipped")]
    assert sorted(s.split(":")[0] for s in skipped) == ["skipped cost", "skipped optuna_front", "skipped reliability",
                                                         "skipped replay_agreement"]


def test_cli_writes_pdf_and_refuses_bad_input(results_root, tmp_path, capsys):
    assert main([str(results_root / "bench"), "--out", str(tmp_path), "--only", "cost"]) == 0
    assert (tmp_path / "cost.pdf").read_bytes()[:4] == b"%PDF" and (tmp_path / "cost.png").is_file()
    (tmp_path / "empty").mkdir()
    for argv in ([str(tmp_path / "nope")], [str(tmp_path / "empty")], [str(results_root), "--only", "bogus"], []):
        capsys.readouterr()
        assert main([*argv, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "allowed:" in err, err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "bench.json").write_text("{not json")
    assert main([str(tmp_path / "bad"), "--out", str(tmp_path)]) == 2
    assert "bench.json cannot be read" in capsys.readouterr().err


def test_policy_table_reads_optional_quality_keys_and_dedupes_baselines(results_root):
    t = policy_table(find_results([results_root / "runs"]))
    thr = t[t["label"] == "threshold"].set_index("display")
    assert thr.filter(like="tau_trust=0.7", axis=0)["errors_per_trusted"].item() == pytest.approx(0.2)
    assert np.isnan(thr.filter(like="tau_trust=0.9", axis=0)["errors_per_trusted"].item())
    assert (t["label"] == "ar").sum() == 2  # one per drafter, not one per run
    d = speed_quality_figure(find_results([results_root / "runs" / "lossy_b"]))
    assert any("errors_per_trusted" in n for n in d.notes) and any("nll_delta" in n for n in d.notes)


def test_cumulative_acceptance_is_accepted_at_j_over_steps_that_drafted(results_root):
    frame = acceptance_frame(find_results([results_root / "runs" / "mtp"]), n_boot=50)
    fixed = frame[frame["policy"] == "fixed"].set_index("depth")
    recs = [json.loads(x) for x in (results_root / "runs" / "mtp" / "records.jsonl").read_text().splitlines()]
    recs = [r for r in recs if r["policy"] == "fixed"]
    steps = sum(r["accept_reached"][0] for r in recs)
    for j in (1, 2, 3):
        assert fixed.loc[j, "cumulative"] == pytest.approx(sum(r["accept_ok"][j - 1] for r in recs) / steps)
        assert fixed.loc[j, "cumulative_lo"] <= fixed.loc[j, "cumulative"] <= fixed.loc[j, "cumulative_hi"]
    # per-position = product of conditional rates when every step drafts k tokens
    assert fixed.loc[3, "cumulative"] == pytest.approx(np.prod(fixed.loc[1:3, "conditional"]), rel=0.05)
    assert frame.loc[frame["policy"] == "threshold", "cumulative"].isna().all()
    ds = conditional(REFERENCES["DeepSeek-V3.2 (MTP, 3 drafts)"])
    assert ds == pytest.approx([0.9393, 0.6789 / 0.9393, 0.3387 / 0.6789])


def test_find_results_refuses_files_and_sorts_kinds(results_root):
    r = find_results([results_root])
    assert r.kinds() == {"run": 4, "calibration": 1, "tune": 1, "replay": 1, "bench": 1}
    with pytest.raises(ResultsError, match="is a file"):
        find_results([results_root / "bench" / "bench.json"])
