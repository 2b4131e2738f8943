"""Honest exactness: on the shipped model in float32, replay decisions equal the decoder's for every built-in policy,
while the confidences the policies see differ in the last bits (within ``CONFIDENCE_TOLERANCE["float32"]``); and a
trace the recorder saw disagree with the decoder (half precision, a chain first-token mismatch) is flagged.

Which runs are compared: every registered policy at its defaults (``goodput`` with the trace's cost model, the same
numbers in both runs, and with a cheap explicit one, so that it drafts), 2 prompts x 16 new tokens, ``max_draft`` = K = 4. Lossless policies: every decision (drafts
and action) of every step. Relaxed ones (``typical``, ``topk_relaxed``): every decision up to and including the
first step that commits a token the target rejects -- after it the real run continues from the wrong token while
the replay continues along the recorded greedy path (``NOTE_TRUST``), so later steps are not comparable.
"""

from __future__ import annotations

import dataclasses

import pytest

import specpolicy.calibration  # noqa: F401 - registers ``calibrated`` (its calibrators belong to the shipped model)
from specpolicy import generate, load_model
from specpolicy.policies import Policy, get_policy, list_policies, with_step_cost
from specpolicy.replay import CONFIDENCE_TOLERANCE, replay, synthetic_trace
from specpolicy.replay.record import record_trace
from specpolicy.replay.simulate import NOTE_HALF

N, K = 16, 4
TEXTS = ["import os\n\n\ndef read_config(path):\n    with open(path) as f:\n", "class Stack:\n    def __init__(self"]


class Log(Policy):
    """Wraps a policy; logs per generation every (drafts, confidences, action) it decides and every outcome."""

    name = "log"

    def __init__(self, inner: Policy):
        self.inner, self.runs = inner, []

    acceptance = property(lambda self: self.inner.acceptance)
    lossless = property(lambda self: self.inner.lossless)
    requires_drafter = property(lambda self: self.inner.requires_drafter)

    def reset(self) -> None:
        self.runs.append([])
        self.inner.reset()

    def decide(self, state):
        action = self.inner.decide(state)
        self.runs[-1].append((state.drafts, state.confidence, action))
        return action

    def observe(self, outcome) -> None:
        self.runs[-1].append(dataclasses.replace(outcome, draft_s=0.0, verify_s=0.0))
        self.inner.observe(outcome)


@pytest.fixture(scope="module")
def shipped():
    model = load_model("tiny")
    assert str(model.dtype) == "torch.float32"
    prompts = [model.tokenizer.encode(t, add_special_tokens=False) for t in TEXTS]
    return model, record_trace(model, prompts, N, K, cost_reps=1, progress=False)


def comparable(run: list) -> list:
    """A generation's log up to and including the first step that committed a wrong (relaxed/trusted) token."""
    for i, e in enumerate(run):
        if not isinstance(e, tuple) and any(not ok for ok in e.verdicts[: e.accepted]):
            return run[: i + 1]
    return run


def test_float32_replay_decisions_equal_the_decoders_for_every_builtin_policy(shipped):
    model, trace = shipped
    assert trace.dtype == "float32" and trace.meta["chain_first_token_mismatch"] == 0
    worst = 0.0
    cases = [(name, {}) for name in list_policies()] + [("goodput", {"step_cost": (1.0, 1.1)})]  # one that drafts
    for name, params in cases:
        policy = with_step_cost(get_policy(name, **params), trace.cost)
        real, rep = Log(policy), Log(policy)
        for ids in trace.prompt_ids:
            generate(model, list(ids), real, max_new_tokens=N, max_draft=K)
        summary = replay(rep, trace).summary
        assert summary["confidence_tolerance"] == CONFIDENCE_TOLERANCE["float32"]
        assert summary["approximate"] is (not policy.lossless)  # the relaxed ones: flagged, never called exact
        for a, b in zip(real.runs, rep.runs, strict=True):
            a, b = (comparable(a), comparable(b)) if not policy.lossless else (a, b)
            assert len(a) == len(b), name
            for x, y in zip(a, b):
                if isinstance(x, tuple):
                    assert (x[0], x[2]) == (y[0], y[2]), (name, x, y)  # the same drafts, the same action
                    worst = max([worst, *(abs(u - v) for u, v in zip(x[1], y[1]))])
                else:
                    assert x == y, name
    assert 0 < worst <= CONFIDENCE_TOLERANCE["float32"]  # float32: not bit-equal, but well within the tolerance


def test_a_trace_that_disagreed_with_the_decoder_is_flagged():
    trace = synthetic_trace(n_prompts=2, max_new_tokens=16, k_max=4)
    assert replay("fixed", trace).summary["approximate"] is False and replay("fixed", trace).summary[
        "chain_mismatch"] == 0
    bad = dataclasses.replace(trace, meta=dict(trace.meta, chain_first_token_mismatch=3))
    s = replay("fixed", bad).summary
    assert s["approximate"] is True and s["chain_mismatch"] == 3 and any("3 positions" in n for n in s["notes"])
    half = replay("fixed", dataclasses.replace(trace, meta=dict(trace.meta, dtype="bfloat16"))).summary
    assert half["approximate"] is True and NOTE_HALF in half["notes"] and half["confidence_tolerance"] is None
