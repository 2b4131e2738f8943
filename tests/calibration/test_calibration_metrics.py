"""Calibration metrics: agreement with sklearn, hand-checked ECE, and the prompt-level bootstrap of the report."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, roc_auc_score
from sklearn.metrics import log_loss as sk_log_loss

from specpolicy.calibration import auroc, brier, calibration_report, ece, log_loss, mce, reliability_table
from specpolicy.calibration.metrics import REPORT_METRICS, _all_metrics, _weighted_metrics


def _random(n=500, seed=0):
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.01, 0.99, n)
    label = (rng.uniform(size=n) < conf**2).astype(int)
    return conf, label


def test_brier_log_loss_auroc_match_sklearn():
    conf, label = _random()
    assert brier(conf, label) == pytest.approx(brier_score_loss(label, conf), abs=1e-15)
    assert log_loss(conf, label) == pytest.approx(sk_log_loss(label, conf), abs=1e-12)
    assert auroc(conf, label) == pytest.approx(roc_auc_score(label, conf), abs=1e-15)


def test_log_loss_clips_certain_mistakes():
    # q = 1 for a rejected draft: unclipped the loss is infinite; clipped at 1e-7 it is -log(1e-7) / 2
    assert log_loss([1.0, 0.5], [0, 1]) == pytest.approx((-np.log(1e-7) - np.log(0.5)) / 2, rel=1e-6)


def test_auroc_is_nan_with_one_class():
    assert np.isnan(auroc([0.2, 0.9], [1, 1]))


def test_ece_hand_checked_uniform_and_quantile():
    conf = np.array([0.1, 0.3, 0.35, 0.8, 0.9, 0.95])
    label = np.array([0, 1, 0, 1, 1, 1])
    # uniform, 2 bins [0, .5], (.5, 1]:  {.1,.3,.35}: mean conf .25, acc 1/3, gap 1/12
    #                                    {.8,.9,.95}: mean conf .8833.., acc 1, gap .11666..
    # ECE = 3/6 * 1/12 + 3/6 * 0.116666 = 0.1;  MCE = 0.116666
    assert ece(conf, label, n_bins=2) == pytest.approx(0.1, abs=1e-12)
    assert mce(conf, label, n_bins=2) == pytest.approx(0.35 / 3, abs=1e-12)
    # quantile, 3 bins: np.percentile edges at 33.3% and 66.7% are 0.3 + (2/3) * 0.05 = 0.3333 and
    # 0.8 + (1/3) * 0.1 = 0.8333, so the bins are {.1,.3} (conf .2, acc .5, gap .3), {.35,.8} (conf .575,
    # acc .5, gap .075), {.9,.95} (conf .925, acc 1, gap .075): ECE = (.3 + .075 + .075) / 3 = 0.15
    assert ece(conf, label, n_bins=3, strategy="quantile") == pytest.approx(0.15, abs=1e-12)


def test_value_on_inner_edge_goes_to_lower_bin():
    table = reliability_table([0.5, 0.9], [1, 1], n_bins=2)
    assert table["count"].tolist() == [1.0, 1.0]
    assert table["upper"].tolist() == [0.5, 1.0]


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_reliability_table_matches_calibration_curve(strategy):
    conf, label = _random(2000, seed=1)
    table = reliability_table(conf, label, n_bins=10, strategy=strategy)
    prob_true, prob_pred = calibration_curve(label, conf, n_bins=10, strategy=strategy)
    np.testing.assert_allclose(table["accuracy"], prob_true, atol=1e-12)
    np.testing.assert_allclose(table["confidence"], prob_pred, atol=1e-12)
    assert table["count"].sum() == 2000
    counts = table["count"].to_numpy()
    gaps = np.abs(table["accuracy"] - table["confidence"]).to_numpy()
    assert ece(conf, label, 10, strategy) == pytest.approx(np.sum(counts * gaps) / counts.sum(), abs=1e-12)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_ece_of_calibrated_data_is_small(strategy):
    rng = np.random.default_rng(2)
    conf = rng.uniform(size=200_000)
    label = rng.uniform(size=200_000) < conf
    assert ece(conf, label, strategy=strategy) < 0.01
    assert ece(conf, label < 0.5, strategy=strategy) > 0.3  # and the metric does notice a broken model


def test_unknown_strategy_is_one_clear_error():
    with pytest.raises(ValueError, match="uniform, quantile"):
        ece([0.5], [1], strategy="equal")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.booleans()), min_size=1, max_size=60), st.integers(1, 20))
def test_ece_bounded_by_mce(rows, n_bins):
    conf, label = np.array([r[0] for r in rows]), np.array([r[1] for r in rows], dtype=float)
    for strategy in ("uniform", "quantile"):
        e, m = ece(conf, label, n_bins, strategy), mce(conf, label, n_bins, strategy)
        assert 0 <= e <= m + 1e-12 <= 1 + 1e-12


def test_weighted_metrics_equal_the_expanded_sample():
    """The bootstrap's weighted fast path computes exactly the public metrics of the resampled rows."""
    rng = np.random.default_rng(3)
    conf = np.sort(rng.uniform(size=400).round(2))  # rounded: ties exercise the AUROC tie rule
    label = (rng.uniform(size=400) < conf).astype(float)
    _, tie = np.unique(conf, return_inverse=True)
    for w in (np.ones(400), rng.integers(0, 4, 400).astype(float)):
        reps = w.astype(int)
        np.testing.assert_allclose(
            _weighted_metrics(conf, label, tie, w, 15),
            _all_metrics(np.repeat(conf, reps), np.repeat(label, reps), 15),
            atol=1e-12,
        )


def _traces(n_prompts=200, per_prompt=20, seed=0, spread=2.0):
    """Tokens of one prompt share a random offset in the logit of acceptance (strong within-prompt dependence)."""
    rng = np.random.default_rng(seed)
    prompt = np.repeat(np.arange(n_prompts), per_prompt)
    depth = np.tile(np.arange(1, per_prompt + 1) % 3 + 1, n_prompts)
    conf = rng.uniform(0.05, 0.95, prompt.size)
    offset = rng.normal(0, spread, n_prompts)[prompt]
    p_accept = 1 / (1 + np.exp(-(np.log(conf / (1 - conf)) + offset)))
    label = (rng.uniform(size=prompt.size) < p_accept).astype(int)
    return pd.DataFrame(
        {
            "depth": depth,
            "confidence": conf,
            "label": label,
            "prompt_id": [f"p{i}" for i in prompt],
            "soft_label": p_accept,
        }
    )


def test_calibration_report_shape_and_point_values():
    df = _traces()
    rep = calibration_report(df, n_boot=50).set_index("group")
    assert rep.index.tolist() == ["1", "2", "3", "all"]
    for m in REPORT_METRICS:
        assert {m, f"{m}_lo", f"{m}_hi"} <= set(rep.columns)
        assert (rep[f"{m}_lo"] <= rep[f"{m}_hi"]).all()
    d2 = df[df.depth == 2]
    assert rep.loc["2", "n"] == len(d2) and rep.loc["2", "n_prompts"] == 200
    assert rep.loc["2", "base_rate"] == pytest.approx(d2.label.mean())
    assert rep.loc["2", "brier"] == pytest.approx(brier(d2.confidence, d2.label))
    assert rep.loc["all", "auroc"] == pytest.approx(auroc(df.confidence, df.label))
    assert rep.loc["all", "brier_lo"] < rep.loc["all", "brier"] < rep.loc["all", "brier_hi"]


def test_report_bootstrap_resamples_prompts_not_rows():
    """Tokens of a prompt share one uniform u (label = u < q): a cluster interval must be much wider than the
    interval of the same rows treated as independent (each its own prompt)."""
    rng = np.random.default_rng(0)
    prompt = np.repeat(np.arange(100), 20)
    conf = rng.uniform(size=prompt.size)
    df = pd.DataFrame(
        {"confidence": conf, "label": (rng.uniform(size=100)[prompt] < conf).astype(int), "prompt_id": prompt}
    )
    per_row = df.assign(prompt_id=np.arange(len(df)))
    reps = [calibration_report(f, by=None, n_boot=200).iloc[0] for f in (df, per_row)]
    ratio = {
        m: (reps[0][f"{m}_hi"] - reps[0][f"{m}_lo"]) / (reps[1][f"{m}_hi"] - reps[1][f"{m}_lo"])
        for m in ("ece_uniform", "brier")
    }
    assert ratio["ece_uniform"] > 1.5 and ratio["brier"] > 1.3, ratio  # seen: 2.4 and 1.8


def test_report_on_soft_labels_and_seeded():
    df = _traces(n_prompts=50)
    rep = calibration_report(df, label_col="soft_label", n_boot=30, seed=1)
    assert rep["auroc"].isna().all() and rep["brier"].notna().all()
    pd.testing.assert_frame_equal(rep, calibration_report(df, label_col="soft_label", n_boot=30, seed=1))


def test_report_names_missing_columns():
    with pytest.raises(ValueError, match="prompt_id"):
        calibration_report(pd.DataFrame({"depth": [1], "confidence": [0.5], "label": [1]}))
