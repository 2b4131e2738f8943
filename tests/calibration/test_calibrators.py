"""Calibrators: they repair known miscalibration, fit per depth with the documented fallbacks, and round-trip JSON."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from specpolicy.calibration import CALIBRATORS, ece, get_calibrator, load_calibrator, split_by_prompt

N = 20_000  # per half


def _distorted(kind: str, seed: int = 0):
    """q and labels whose true P(accept | q) is q**3 ("cube") or sigmoid(logit(q) / 2.5) ("temperature")."""
    rng = np.random.default_rng(seed)
    if kind == "cube":
        q = rng.beta(4, 1.5, 2 * N)  # most mass at high q, like a confident drafter
        p = q**3
    else:
        q = rng.uniform(0.001, 0.999, 2 * N)
        p = expit(logit(q) / 2.5)  # over-confident by a temperature of 2.5
    return q, (rng.uniform(size=2 * N) < p).astype(int)


@pytest.mark.parametrize(
    "kind,name",
    [
        ("temperature", "temperature"),
        ("temperature", "platt"),
        ("temperature", "isotonic"),
        ("cube", "platt"),
        ("cube", "isotonic"),
    ],
)  # temperature scaling has no bias term, so it cannot undo q**3 (a shift in logit space); it is not asked to
def test_calibrator_fitted_on_one_half_cuts_ece_on_the_other(kind, name):
    q, y = _distorted(kind)
    before = ece(q[N:], y[N:])
    cal = get_calibrator(name).fit(q[:N], y[:N])
    after = ece(cal.predict(q[N:]), y[N:])
    assert before > 0.1
    assert after < before / 5, (before, after)  # seen: factors 14 to 26


def test_temperature_recovers_the_distorting_temperature():
    q, y = _distorted("temperature")
    assert get_calibrator("temperature").fit(q, y).pooled["T"] == pytest.approx(2.5, rel=0.05)


def test_platt_and_isotonic_predict_like_sklearn():
    q, y = _distorted("cube", seed=1)
    z = logit(np.clip(q, 1e-6, 1 - 1e-6))[:, None]
    lr = LogisticRegression(C=np.inf).fit(z, y)
    np.testing.assert_allclose(get_calibrator("platt").fit(q, y).predict(q), lr.predict_proba(z)[:, 1], atol=1e-6)
    iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(q, y)
    grid = np.linspace(-0.1, 1.1, 1001).clip(0, 1)
    np.testing.assert_allclose(get_calibrator("isotonic").fit(q, y).predict(grid), iso.predict(grid), atol=1e-12)


def _by_depth(seed: int = 0):
    """Depth 1 calibrated, depth 2 only 10 rows, depth 3 over-confident (T = 3), depth 5 only accepted drafts."""
    rng = np.random.default_rng(seed)
    sizes = {1: 5000, 2: 10, 3: 5000, 5: 200}
    depth = np.concatenate([np.full(n, d) for d, n in sizes.items()])
    q = rng.uniform(0.01, 0.99, depth.size)
    p = np.where(depth == 3, expit(logit(q) / 3.0), q)
    y = (rng.uniform(size=depth.size) < p).astype(int)
    y[depth == 5] = 1
    return q, y, depth


def test_per_depth_maps_differ_and_fallbacks_apply():
    q, y, depth = _by_depth()
    cal = get_calibrator("temperature").fit(q, y, depth)
    assert sorted(cal.depth_maps) == [1, 3]  # 2: too few rows, 5: one class
    assert cal.depth_maps[1]["T"] == pytest.approx(1.0, abs=0.1)
    assert cal.depth_maps[3]["T"] == pytest.approx(3.0, rel=0.1)
    x = np.full(6, 0.95)
    p = cal.predict(x, depth=[1, 2, 3, 4, 5, 9])
    assert p[0] > 0.9 and p[2] < 0.8  # same q, different maps
    pooled = cal.predict(0.95)[0]  # depth=None: the pooled map
    assert p[1] == pytest.approx(pooled)  # depth 2 (10 rows, below the largest fitted depth): pooled
    assert p[0] != pytest.approx(pooled) and p[2] != pytest.approx(pooled)
    # 4 (unseen), 5 (one class) and 9 (unseen) lie beyond the largest fitted depth (3): depth 3's map
    assert p[3] == pytest.approx(p[2]) and p[4] == pytest.approx(p[2]) and p[5] == pytest.approx(p[2])
    np.testing.assert_allclose(cal.predict(x, depth=3), p[2])  # one depth for all rows


def test_one_class_depth_below_the_last_uses_the_pooled_map():
    rng = np.random.default_rng(8)
    q = rng.uniform(size=1000)
    depth = np.repeat([1, 2], 500)
    y = np.where(depth == 1, 1, rng.uniform(size=1000) < q)
    cal = get_calibrator("platt").fit(q, y, depth)
    assert sorted(cal.depth_maps) == [2]
    np.testing.assert_array_equal(cal.predict(q, depth=1), cal.predict(q))


@pytest.mark.parametrize("name", sorted(CALIBRATORS))
def test_json_round_trip_predicts_identically(name, tmp_path):
    q, y, depth = _by_depth(seed=3)
    cal = get_calibrator(name).fit(q, y, depth)
    path = tmp_path / f"{name}.json"
    cal.save(path)
    assert json.loads(path.read_text())["calibrator"] == name  # plain JSON, no pickle
    back = load_calibrator(path)
    assert type(back) is type(cal) and back.to_dict() == cal.to_dict()
    x = np.random.default_rng(4).uniform(size=3000)
    d = np.random.default_rng(5).integers(1, 8, 3000)
    assert np.array_equal(back.predict(x, d), cal.predict(x, d))
    assert np.array_equal(back.predict(x), cal.predict(x))


@pytest.mark.parametrize("name", sorted(CALIBRATORS))
def test_predict_one_equals_predict_bit_for_bit(name):
    """Fitted depths, a depth below the largest with the pooled map, unseen deeper depths, no depth, q at 0 and 1."""
    q, y, depth = _by_depth(seed=7)
    cal = get_calibrator(name).fit(q, y, depth)
    x = np.concatenate([np.random.default_rng(8).uniform(size=200), [0.0, 1.0, 1e-9, 0.5]])
    for d in (1, 2, 3, 4, 9, None):
        want = [float(cal.predict([v], depth=None if d is None else [d])[0]) for v in x]
        assert [cal.predict_one(float(v), d) for v in x] == want, d


@pytest.mark.parametrize("name", sorted(CALIBRATORS))
def test_contract_every_calibrator(name):
    """Outputs are probabilities, monotone in q at a fixed depth, and unfitted use is an error."""
    q, y, depth = _by_depth(seed=6)
    with pytest.raises(RuntimeError, match="not fitted"):
        get_calibrator(name).predict([0.5])
    cal = get_calibrator(name).fit(q, y, depth)
    x = np.linspace(0, 1, 501)
    for d in (1, 2, 5):
        p = cal.predict(x, depth=d)
        assert p.shape == x.shape and np.all((p >= 0) & (p <= 1)) and np.all(np.diff(p) >= -1e-12)


def test_soft_labels_fit():
    rng = np.random.default_rng(7)
    q = rng.uniform(0.01, 0.99, N)
    soft = expit(logit(q) / 2.0)  # the acceptance probability itself as the label
    for name in ("temperature", "platt", "isotonic"):
        pred = get_calibrator(name).fit(q, soft).predict(q)
        assert np.max(np.abs(pred - soft)) < 0.05, name


def test_registry_suggests_names_and_rejects_bad_input():
    with pytest.raises(ValueError, match="did you mean 'isotonic'"):
        get_calibrator("isotnic")
    with pytest.raises(ValueError, match="both accepted and rejected"):
        get_calibrator("platt").fit([0.2, 0.9], [1, 1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        get_calibrator("platt").fit([0.2, 1.5], [0, 1])
    with pytest.raises(ValueError, match="depth"):
        get_calibrator("platt").fit([0.2, 0.9], [0, 1], depth=[0, 1])


def test_load_rejects_foreign_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"calibrator": "magic", "format_version": 1}')
    with pytest.raises(ValueError, match="not a specpolicy calibrator"):
        load_calibrator(path)


def test_split_by_prompt_is_disjoint_and_seeded():
    df = pd.DataFrame({"prompt_id": np.repeat([f"p{i}" for i in range(40)], 5), "x": np.arange(200)})
    cal, ev = split_by_prompt(df, frac=0.25, seed=3)
    assert not set(cal.prompt_id) & set(ev.prompt_id)
    assert len(cal) + len(ev) == 200 and cal.prompt_id.nunique() == 10
    again, _ = split_by_prompt(df, frac=0.25, seed=3)
    other, _ = split_by_prompt(df, frac=0.25, seed=4)
    assert again.index.equals(cal.index) and not other.index.equals(cal.index)
    with pytest.raises(ValueError, match="frac"):
        split_by_prompt(df, frac=1.0)
