"""The ``Drafter`` seam: any object with the protocol's members plugs into the one decode loop.

A scripted drafter (no network: it proposes the reference continuation, wrong where the script says, or nothing)
drives exact schedules through the decoder, so what each step accepts is known in advance; it also logs every call
the decoder makes, which pins the protocol's indexing (begin/draft/advance/crop and n).
"""

from __future__ import annotations

import math

import pytest
import torch

from specpolicy.decoding import Drafter, generate
from specpolicy.decoding.drafters import check_drafter


class Scripted:
    """Proposes ``script[index]`` for the token at ``index`` (a point mass); ``wrong`` indices get another token;
    ``missing`` indices get no draft at all. Logs every call."""

    name, native_depths = "scripted", 3

    def __init__(self, script, vocab, wrong=(), missing=()):
        self.script, self.vocab, self.wrong, self.missing, self.log = list(script), vocab, set(wrong), set(missing), []

    def begin(self, tokens, n, hidden):
        self.log.append(("begin", n, tuple(hidden.shape)))

    def advance(self, hidden):
        self.log.append(("advance", tuple(hidden.shape)))

    def crop(self, n):
        self.log.append(("crop", n))

    def draft(self, depth, tokens, n):
        index = n + depth
        self.log.append(("draft", depth, n))
        if index in self.missing or index >= len(self.script):
            return None
        token = self.script[index]
        if index in self.wrong:
            token = (token + 1) % self.vocab
        logits = torch.full((self.vocab,), -math.inf, dtype=torch.float64)
        logits[token] = 0.0
        return logits


@pytest.fixture
def setup(tiny, hf_ref):
    model = tiny(seed=3, k=2)
    prompt = [4, 8, 15, 16, 23]
    ref = hf_ref(model, prompt, 24)
    return model, prompt, ref, prompt + list(ref)


def test_scripted_drafter_is_a_drafter():
    d = Scripted([1, 2], 64)
    assert isinstance(d, Drafter) and check_drafter(d) is d

    class Half:
        name = "half"

        def draft(self, depth, tokens, n): ...

    with pytest.raises(TypeError, match="lacks native_depths, begin, advance, crop"):
        check_drafter(Half())
    with pytest.raises(TypeError, match="lacks"):
        generate(None, [1], "fixed", drafter=Half())


def test_a_perfect_drafter_is_always_accepted(setup):
    model, prompt, ref, script = setup
    res = generate(model, prompt, "fixed", k=3, max_new_tokens=24, drafter=Scripted(script, 64))
    assert res.token_ids == ref
    assert all(s.accepted == len(s.drafts) for s in res.steps)
    assert [len(s.drafts) for s in res.steps] == [3] * 5 + [2]  # 1 + 5 x 4 + 3 = 24: the budget caps the last
    assert res.stats.tpf == pytest.approx(24 / 7)


def test_wrong_drafts_are_rejected_exactly_where_scripted(setup):
    model, prompt, ref, script = setup
    P = len(prompt)
    wrong = {P + 2, P + 9}  # new tokens 2 and 9
    res = generate(model, prompt, "fixed", k=3, max_new_tokens=24, drafter=Scripted(script, 64, wrong=wrong))
    assert res.token_ids == ref
    rejected = {P + s.position + s.accepted for s in res.steps if s.accepted < len(s.drafts)}
    assert rejected == wrong


def test_no_draft_means_the_step_verifies_what_it_has(setup):
    model, prompt, ref, script = setup
    P = len(prompt)
    res = generate(model, prompt, "fixed", k=3, max_new_tokens=24, drafter=Scripted(script, 64, missing={P + 3}))
    assert res.token_ids == ref
    step = next(s for s in res.steps if s.position < 3 < s.position + 4)
    assert len(step.drafts) == 3 - step.position  # drafting stopped before new token 3
    assert any(len(s.drafts) == 3 for s in res.steps)  # and resumed afterwards


def test_the_decoder_calls_the_protocol_in_order(setup):
    model, prompt, ref, script = setup
    d = Scripted(script, 64)
    res = generate(model, prompt, "fixed", k=2, max_new_tokens=9, drafter=d)
    P = len(prompt)
    assert d.log[0] == ("begin", P, (1, P, 32))
    n, i = P, 1
    for s in res.steps:
        m = len(s.drafts)
        assert d.log[i : i + m] == [("draft", j, n) for j in range(1, m + 1)]
        assert d.log[i + m] == ("advance", (1, m + 1, 32))  # the verified block's target hidden states
        n += len(s.committed)
        assert d.log[i + m + 1] == ("crop", n)  # t_n is the new last committed token
        i += m + 2
    assert i == len(d.log)
