"""analysis.paper_assets: tables carry the numbers of the results they are made from; bad paths exit 2."""

import json

from analysis.paper_assets import bench_table, main
from specpolicy.models.loading import ASSET_DIR


def test_model_table_has_card_figures(tmp_path):
    assert main(["--out", str(tmp_path)]) == 0
    card = json.loads((ASSET_DIR / "tiny" / "model_card.json").read_text())
    tex = (tmp_path / "model.tex").read_text()
    assert f"{card['evaluation']['depths']['1']['agreement']:.3f}" in tex
    assert f"{card['evaluation']['next_token']['top1']:.3f}" in tex


def test_bench_table_and_missing_dir(tmp_path, capsys):
    bench = {"rows": {"ar": {"tokens_per_s": 100.0, "speedup_vs_ar": 1.0, "tpf": 1.0},
                      "fixed(k=4)": {"tokens_per_s": 150.0, "speedup_vs_ar": 1.5, "tpf": 2.7}},
             "cost": {"c": {"1": 1.0, "2": 1.1}, "mtp_step_rel": 0.17}, "n_prompts": 20, "new_tokens": 128,
             "threads": 2, "repeats": 3, "cpu": "x"}
    tex = bench_table(bench, "runs/bench/x")
    assert "150.0" in tex and "1.50" in tex and "2.70" in tex and r"fixed(k=4)" in tex
    assert main(["--bench", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_paper_numbers_from_missing_results_are_dashes(tmp_path):
    """An empty results folder still defines every macro (as --), and each figure include says it was not drawn."""
    import re

    import pytest

    from analysis.paper_numbers import Numbers, escape, write_generated

    (tmp_path / "runs").mkdir()
    files = write_generated(tmp_path / "runs", tmp_path / "gen")
    tex = (tmp_path / "gen" / "numbers.tex").read_text()
    assert r"\newcommand{\rsTpfMtpStdlibFixed}{--}" in tex and r"\newcommand{\rsGoodputRegistered}{no}" in tex
    card = json.loads((ASSET_DIR / "tiny" / "model_card.json").read_text())
    assert rf"\newcommand{{\rsCardTopOne}}{{{card['evaluation']['next_token']['top1']:.3f}}}" in tex
    assert "was not drawn" in (tmp_path / "gen" / "fig_acceptance.tex").read_text()
    assert len(re.findall(r"\\newcommand", tex)) > 100 and len(files) > 10
    n = Numbers()
    n.add("Ok", 1.234)
    with pytest.raises(ValueError):
        n.add("Ok", 2.0)
    with pytest.raises(ValueError):
        n.add("Bad1", 2.0)
    assert escape("a_b 50% {x}") == r"a\_b 50\% \{x\}"
