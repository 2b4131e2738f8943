"""The ``calibrated`` policy: calibrated confidences reach the base policy, everything else is the base's, parameters
fail with one clear line, calibrators load from JSON (shipped names or paths), and the policy contract holds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from specpolicy.calibration import (
    SHIPPED_DIR,
    CalibratedPolicy,
    get_calibrator,
    load_calibrator,
    resolve_calibrator,
    shipped_calibrators,
)
from specpolicy.policies import (
    AcceptanceStats,
    Action,
    Policy,
    PolicyParamError,
    StepOutcome,
    StepState,
    get_policy,
    list_policies,
    register_policy,
)
from specpolicy.policies import registry as registry_module

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))


@pytest.fixture
def platt_json(tmp_path) -> Path:
    """A Platt calibrator for an over-confident drafter at depth 2 (P(accept) = q^2 there), saved as JSON."""
    rng = np.random.default_rng(0)
    q, depth = rng.uniform(0.01, 0.99, 20_000), rng.integers(1, 3, 20_000)
    label = (rng.uniform(size=q.size) < np.where(depth == 1, q, q**2)).astype(int)
    path = tmp_path / "platt.json"
    get_calibrator("platt").fit(q, label, depth).save(path)
    return path


def _spy_class():
    class Spy(Policy):
        """Records every state it is asked about; extends to depth 3, then trusts d_1 if its confidence >= 0.5."""

        name = "test_spy"

        def __init__(self, k: int = 3) -> None:
            self.k, self.seen, self.outcomes, self.resets = k, [], [], 0

        def decide(self, state):
            self.seen.append(state)
            if state.depth < min(self.k, state.budget):
                return Action.extend()
            return Action.trust([state.confidence[0] >= 0.5] + [False] * (state.depth - 1)) if state.depth else \
                Action.verify()

        def reset(self):
            self.resets += 1

        def observe(self, outcome):
            self.outcomes.append(outcome)

        def params(self):
            return {"k": self.k}

    return Spy


def test_importing_calibration_registers_the_policy():
    assert "calibrated" in list_policies()
    assert isinstance(get_policy("calibrated"), CalibratedPolicy)


def test_calibrated_confidences_reach_the_base_policy_and_the_rest_of_the_state_is_untouched(
    scratch_registry, platt_json
):
    register_policy(_spy_class())
    policy = get_policy("calibrated", base="test_spy", calibrator=str(platt_json))
    cal = load_calibrator(platt_json)
    state = StepState(drafts=(4, 8, 15), confidence=(0.9, 0.9, 0.3), entropy=(0.1, 0.2, 0.3), margin=(0.8, 0.7, 0.1),
                      step=7, position=40, budget=10, native_depths=2, stats=AcceptanceStats((3,), (2,)),
                      last_accepted=1)
    action = policy.decide(state)
    seen = policy.base_policy.seen[-1]
    expected = cal.predict([0.9, 0.9, 0.3], depth=[1, 2, 3])  # depth 3 uses the deepest fitted map (2)
    assert seen.confidence == pytest.approx(tuple(expected)) and all(type(c) is float for c in seen.confidence)
    assert seen.confidence[0] == pytest.approx(0.9, abs=0.02)  # depth 1 is calibrated already
    assert seen.confidence[1] == pytest.approx(0.81, abs=0.03)  # depth 2: over-confident, P = q^2
    assert (seen.drafts, seen.entropy, seen.margin, seen.step, seen.position, seen.budget, seen.native_depths,
            seen.stats, seen.last_accepted) == (state.drafts, state.entropy, state.margin, state.step, state.position,
                                                state.budget, state.native_depths, state.stats, state.last_accepted)
    assert action == Action.trust([True, False, False])
    # reset and observe are the base's
    outcome = StepOutcome(3, 1, (True, False, False), (True, False), 2)
    policy.observe(outcome)
    policy.reset()
    assert policy.base_policy.outcomes == [outcome] and policy.base_policy.resets == 1


def test_threshold_thresholds_read_as_acceptance_probabilities(platt_json):
    """q(d_2) = 0.9 at depth 2 means P(accept) ~ 0.81: a raw threshold trusts it at tau_trust = 0.85, calibrated not."""
    state = StepState(drafts=(1, 2), confidence=(0.97, 0.9), budget=2)
    raw = get_policy("threshold", tau_extend=0.5, tau_trust=0.85, k_max=2)
    cal = get_policy("calibrated", base="threshold", base_params={"tau_extend": 0.5, "tau_trust": 0.85, "k_max": 2},
                     calibrator=str(platt_json))
    assert raw.decide(state) == Action.trust([True, True])
    assert cal.decide(state) == Action.trust([True, False])
    assert cal.decide(StepState(drafts=(1,), confidence=(0.6,), budget=5)) == Action.extend()  # P ~ 0.6 >= 0.5
    assert cal.decide(StepState(drafts=(1, 2), confidence=(0.8, 0.6), budget=5)) == Action.verify()  # P ~ 0.8, 0.36


def test_acceptance_and_lossless_are_the_base_policys():
    assert get_policy("calibrated").lossless and get_policy("calibrated").acceptance is None
    lossy = get_policy("calibrated", base="threshold", base_params={"tau_trust": 0.9})
    assert not lossy.lossless
    typical = get_policy("calibrated", base="typical", base_params={"k": 3})
    assert typical.acceptance == get_policy("typical", k=3).acceptance and not typical.lossless


def test_adaptive_base_state_is_delegated():
    p = get_policy("calibrated", base="heuristic", base_params={"k_init": 4})
    p.observe(StepOutcome(4, 4, (False,) * 4, (True,) * 4, 5))
    assert p.base_policy.k == 6
    p.reset()
    assert p.base_policy.k == 4


def test_params_round_trip_and_name_the_full_base_parameters(platt_json):
    p = get_policy("calibrated", base="threshold", base_params={"tau_trust": 0.9}, calibrator=str(platt_json))
    assert p.params() == {"base": "threshold", "base_params": {"tau_extend": 0.5, "tau_trust": 0.9, "k_max": 6},
                          "calibrator": str(platt_json.resolve()), "drafter": "mtp"}
    assert get_policy("calibrated", **p.params()).params() == p.params()
    assert json.dumps(p.params())
    assert repr(p).startswith("CalibratedPolicy(base='threshold'")
    assert get_policy("calibrated").params()["calibrator"] == "platt"  # a shipped name stays a name


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"base": "treshold"}, r"^calibrated: unknown base policy 'treshold'; did you mean 'threshold'\? allowed: ar, "),
        ({"base": "calibrated"}, r"^calibrated: base='calibrated' is invalid; allowed: a registered policy other"),
        ({"base": 3}, r"^calibrated: base=3 is invalid"),
        ({"base_params": [1]}, r"^calibrated: base_params=\[1\] is not a mapping"),
        ({"base_params": {"tau_trust": 1.5}},
         r"^calibrated: base_params: threshold: tau_trust=1.5 is out of range; allowed: 0 <= tau_trust <= 1$"),
        ({"base_params": {"tau": 0.5}}, r"^calibrated: base_params: threshold: unknown parameter tau"),
        ({"calibrator": "platy"}, r"^calibrated: unknown calibrator 'platy'; did you mean 'platt'\? allowed: a calibrator shipped for drafter mtp"),
        ({"calibrator": "/no/such/file.json"}, r"^calibrated: calibrator file '/no/such/file.json' does not exist"),
        ({"calibrator": ""}, r"^calibrated: calibrator='' is not a name or path"),
        ({"calibrater": "platt"}, r"^calibrated: unknown parameter calibrater \(did you mean calibrator\?\)"),
    ],
)
def test_bad_parameters_fail_with_one_line(params, message):
    with pytest.raises(PolicyParamError, match=message) as err:
        get_policy("calibrated", **params)
    assert "\n" not in str(err.value)


def test_a_file_that_is_not_a_calibrator_is_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"calibrator": "platt"}')
    with pytest.raises(PolicyParamError, match=r"bad.json is not a specpolicy calibrator file"):
        get_policy("calibrated", calibrator=str(bad))
    bad.write_text("not json")
    with pytest.raises(PolicyParamError, match=r"is not a specpolicy calibrator file"):
        get_policy("calibrated", calibrator=str(bad))


def test_shipped_calibrators_load_and_resolve_by_name():
    names = shipped_calibrators()
    assert {"identity", "temperature", "platt", "isotonic"} <= set(names)
    for name in names:
        path = resolve_calibrator(name)
        assert path == SHIPPED_DIR / "mtp" / f"{name}.json"
        cal = load_calibrator(path)
        assert cal.name == name and json.loads(path.read_text())["provenance"]["weights_sha256"]
        p = get_policy("calibrated", calibrator=name)
        conf = p.calibrate((0.2, 0.5, 0.9, 0.99, 1.0, 0.0, 0.7))  # deeper than any fitted depth too
        assert len(conf) == 7 and all(0.0 <= c <= 1.0 for c in conf)
    identity = get_policy("calibrated", calibrator="identity")
    assert identity.calibrate((0.2, 0.9)) == pytest.approx((0.2, 0.9))


def test_calibrating_a_chain_gives_every_prefix_its_own_values():
    """What ``CalibratedPolicy.decide_chain`` relies on, for every shipped calibrator: d_1..d_n calibrated at once
    equal each prefix d_1..d_m calibrated alone, bit for bit, and the memoised values equal ``predict``'s."""
    rng = np.random.default_rng(3)
    for name in shipped_calibrators():
        p, cal = get_policy("calibrated", calibrator=name), load_calibrator(resolve_calibrator(name))
        for _ in range(40):
            size = int(rng.integers(1, 11))
            conf = tuple(float(x) for x in rng.choice([rng.random(), 0.0, 1.0, 0.5, 1e-9], size=size))
            whole = p.calibrate(conf)
            assert whole == tuple(float(x) for x in cal.predict(conf, depth=np.arange(1, len(conf) + 1)))
            assert all(p.calibrate(conf[:m]) == whole[:m] for m in range(1, len(conf)))


def test_identity_calibrated_threshold_decides_like_threshold():
    rng = np.random.default_rng(0)
    a = get_policy("threshold", tau_extend=0.4, tau_trust=0.8)
    b = get_policy("calibrated", base="threshold", base_params={"tau_extend": 0.4, "tau_trust": 0.8},
                   calibrator="identity")
    for _ in range(300):
        m = int(rng.integers(0, 7))
        state = StepState(drafts=tuple(range(m)), confidence=tuple(float(x) for x in rng.random(m)),
                          budget=int(rng.integers(0, 8)))
        assert a.decide(state) == b.decide(state)


def test_base_search_space_delegates_to_the_base_class():
    import optuna

    p = get_policy("calibrated", base="fixed", base_params={"k": 2})
    assert p.base_search_space(optuna.trial.FixedTrial({"k": 5})) == {"base_params": {"k": 5}}
    space = get_policy("calibrated").base_search_space(
        optuna.trial.FixedTrial({"tau_extend": 0.3, "tau_trust": 0.9, "k_max": 4}))
    assert get_policy("calibrated", **space).params()["base_params"] == {"tau_extend": 0.3, "tau_trust": 0.9,
                                                                          "k_max": 4}
    assert CalibratedPolicy.search_space(optuna.trial.FixedTrial({})) == {}


@pytest.mark.slow
def test_policy_contract_holds_for_calibrated():
    """The parametrised contract of tests/policies, run with ``calibrated`` registered before collection."""
    code = ("import sys, pytest, specpolicy.calibration; "
            "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-k', 'calibrated', "
            "'tests/policies/test_policy_contract.py']))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]  # 5 would mean: no calibrated case collected


def test_calibrators_belong_to_one_drafter(tmp_path):
    """A calibrator fitted on one drafter's confidences is refused for another, by the policy, the decoder and the
    replay; shipped calibrators are looked up per drafter."""
    import json

    from specpolicy.decoding import DecodeError, NgramDrafter, generate
    from specpolicy.replay import ReplayError, replay, synthetic_trace
    from specpolicy.testing import small_model

    with pytest.raises(PolicyParamError, match="unknown calibrator 'platt'.*shipped for drafter medusa"):
        get_policy("calibrated", calibrator="platt", drafter="medusa")  # none shipped for medusa here
    data = json.loads(resolve_calibrator("platt").read_text())
    own = tmp_path / "ngram_platt.json"
    own.write_text(json.dumps({**data, "drafter": "ngram"}))
    with pytest.raises(PolicyParamError, match="fitted on drafts of ngram, not mtp"):
        get_policy("calibrated", calibrator=str(own))
    policy = get_policy("calibrated", calibrator=str(own), drafter="ngram")
    assert policy.requires_drafter == "ngram" and policy.params()["drafter"] == "ngram"
    model = small_model(seed=0, k=2)
    with pytest.raises(DecodeError, match="fitted to drafter ngram, not mtp"):
        generate(model, [1, 2, 3], policy, max_new_tokens=4)
    generate(model, [1, 2, 3, 1, 2], policy, max_new_tokens=4, drafter=NgramDrafter(64))  # the right drafter runs
    with pytest.raises(ReplayError, match="fitted to drafter ngram, but the trace was recorded with mtp"):
        replay(policy, synthetic_trace(2, 8, 2))
    with pytest.raises(ReplayError, match="recorded with drafter mtp, not medusa"):
        replay("fixed", synthetic_trace(2, 8, 2), drafter="medusa")
