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
