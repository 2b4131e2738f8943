"""The drafter's per-depth KV caches give the drafts that a cache-free, teacher-forced MTP chain gives.

Greedy exactness cannot see a stale drafter cache (a wrong draft is merely rejected), so every draft recorded in a
run is recomputed from scratch with ``mtp_chain_logits`` (the training path) over the committed tokens followed by
the earlier drafts of the step, and compared with the decoder's draft and its confidence q(d_j). This covers the
catch-up after accepted tokens, the crop after a correction, depths past the last MTP layer, trusted tokens and probes.
"""

from __future__ import annotations

import random

import pytest
import torch

from specpolicy.decoding import DraftProbe, generate
from specpolicy.decoding.acceptance import warp
from specpolicy.decoding.drafters.mtp import CatchUp, MTPDrafter
from specpolicy.models.mtp import mtp_chain_logits

CASES = [
    # (seed, K, policy, params, decode kwargs)
    (0, 1, "fixed", {"k": 4}, {}),
    (1, 2, "fixed", {"k": 5}, {}),
    (2, 3, "heuristic", {}, {}),
    (3, 2, "threshold", {"tau_extend": 0.2, "k_max": 6}, {}),
    (4, 2, "threshold", {"tau_extend": 0.3, "tau_trust": 0.2, "k_max": 4}, {}),  # trusted tokens
    (5, 2, "typical", {"k": 3}, {}),  # relaxed tokens
    (0, 2, "entropy", {"max_entropy": 2.0}, {"probe": 6}),
    (1, 3, "fixed", {"k": 3}, {"temperature": 1.0, "seed": 4}),  # sampled drafts
    (2, 1, "fixed", {"k": 2}, {"temperature": 0.8, "top_k": 5, "seed": 1, "probe": 4}),
]


def _reference_drafts(model, tokens: list[int], n: int, m: int):
    """Logits of the chain at index n-1 for depths 1..m. tokens: t_0..t_n (last committed), then d_1..d_{m-1}."""
    ids = torch.tensor([tokens])  # [1, n + m]
    with torch.no_grad():
        h0 = model.target.get_decoder()(input_ids=ids).last_hidden_state  # [1, n + m, H]; causal: rows >= n unused
        chain = mtp_chain_logits(model.drafter, h0, ids, m)  # depth j: [1, n + m - j, V], row i predicts t_{i+j+1}
    return [chain[j][0, n - 1] for j in range(m)]


@pytest.mark.parametrize(("seed", "k", "policy", "params", "decode"), CASES)
def test_drafts_equal_cache_free_chain(tiny, seed, k, policy, params, decode):
    decode = dict(decode)
    model = tiny(seed=seed, k=k, tie=0.8)
    prompt = [(7 * seed + 3 * i) % 64 for i in range(5 + seed)]
    probe = DraftProbe(decode.pop("probe", 0))
    res = generate(model, prompt, policy, max_new_tokens=30, probe=probe, **params, **decode)
    sample = decode.get("temperature", 0.0) > 0
    warp_kw = {key: decode[key] for key in ("temperature", "top_k", "top_p") if key in decode}
    checked = 0
    for s, (_, _, _, extra) in zip(res.steps, probe.steps):
        chain = list(s.drafts) + [f[0] for f in extra]
        conf = list(s.confidence) + [f[1] for f in extra]
        if not chain:
            continue
        committed = prompt + list(res.token_ids[: s.position])
        n = len(committed) - 1
        ref = _reference_drafts(model, committed + chain[:-1], n, len(chain))
        for j, (d, c, logits) in enumerate(zip(chain, conf, ref)):
            q = warp(logits, **warp_kw) if sample else torch.softmax(logits.float(), -1)
            if not sample:
                assert d == int(logits.argmax()), (s.step, j + 1)
            assert c == pytest.approx(float(q[d]), abs=1e-5), (s.step, j + 1)
            checked += 1
    assert checked >= 10
    # the caches were cropped past drafted entries at least once (a rejection), or lossy tokens were committed
    assert any(s.accepted < len(s.drafts) for s in res.steps) or res.stats.lossy_tokens > 0


class _CountingMTP(MTPDrafter):
    """The MTP drafter, counting the rows (pending indices) each draft call processes, per last committed index."""

    def __init__(self, mtp):
        super().__init__(mtp)
        self.rows: dict[int, int] = {}
        self.fresh: dict[int, int] = {}  # rows beyond the first of drafts at a depth with no entry yet

    def draft(self, depth, tokens, n):
        self.rows[n] = self.rows.get(n, 0) + n - self.length(depth)
        if self.length(depth) == 0:
            self.fresh[n] = self.fresh.get(n, 0) + n - 1
        return super().draft(depth, tokens, n)


@pytest.mark.parametrize(("seed", "k", "policy", "params", "decode"), [c for c in CASES if "probe" not in c[4]])
def test_catch_up_counts_the_rows_the_drafter_processes(tiny, seed, k, policy, params, decode):
    """``CatchUp`` (what the cost model and the replay price) follows the drafter's own bookkeeping step by step."""
    model = tiny(seed=seed, k=k, tie=0.8)
    prompt = [(7 * seed + 3 * i) % 64 for i in range(5 + seed)]
    drafter = _CountingMTP(model.drafter)
    res = generate(model, prompt, policy, max_new_tokens=30, drafter=drafter, **params, **decode)
    cu, got = CatchUp(len(prompt)), []
    for s in res.steps:
        n = cu.n
        rows = cu.step(len(s.drafts), len(s.committed))
        got.append(rows)
        assert rows == drafter.rows.get(n, 0), (s.step, n)
        assert cu.fresh == drafter.fresh.get(n, 0), (s.step, n)
    assert max(got) > len(prompt) and any(0 < r for r in got)  # a first draft read the whole context
    assert sum(drafter.fresh.values()) > 0
    assert sum(drafter.rows.values()) == sum(got)


class _ListCatchUp:
    """``CatchUp`` as it was first written, every entry in a list (the reference for its closed form)."""

    def __init__(self, n):
        self.n, self.L, self.fresh = n, [], 0

    def step(self, drafted, committed):
        n, L = self.n, self.L
        self.n = n + committed
        if not drafted:
            self.fresh = 0
            return 0
        if len(L) < drafted:
            L += [0] * (drafted - len(L))
        head = L[:drafted]
        self.fresh = head.count(0) * (n - 1) if n > 0 else 0
        L[:drafted] = [min(n, n + committed - 1 - j) for j in range(drafted)]
        return drafted * n - sum(head)


def test_catch_up_in_closed_form_equals_the_list_of_entries():
    """Random schedules (deeper, shallower, equal depths; no draft; nothing committed; contexts of 0..14 tokens,
    where entries can be empty or negative, and long ones): rows, fresh rows and the entries equal the list's."""
    rng = random.Random(3)
    for trial in range(20000):
        n0 = rng.randint(0, 14) if trial % 2 else rng.randint(15, 300)
        fast, ref, k = CatchUp(n0), _ListCatchUp(n0), rng.randint(1, 10)
        for _ in range(rng.randint(1, 40)):
            m = rng.randint(0, k) if rng.random() < 0.6 else rng.choice([k, k - 1 if k > 1 else k])
            c = rng.randint(0, m + 1) if rng.random() < 0.1 else rng.randint(1, m + 1)
            assert (fast.step(m, c), fast.fresh, fast.n) == (ref.step(m, c), ref.fresh, ref.n), trial
            if rng.random() < 0.05:
                assert fast.L == ref.L, trial
        assert fast.L == ref.L, trial
