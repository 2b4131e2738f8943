"""Replay results pinned to digests: the replay loop, ``StepState``, ``AcceptanceStats`` and the built-in policies
were made faster without changing any result. ``DIGESTS`` were computed with the code before that change (issue
13); every built-in policy (defaults and a lossy/tuned variant), two synthetic traces (one with EOS), a shorter
horizon and a shallower ``max_draft``. Per case, the digest is over every ``PromptReplay`` and the whole summary.

If a change of replay semantics is intended, print ``digests()`` and update ``DIGESTS`` in the same commit, saying why.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import specpolicy.calibration  # noqa: F401 - registers ``calibrated``
from specpolicy.replay import replay, synthetic_trace

CASES = {  # case: (policy, parameters)
    "ar": ("ar", {}), "fixed": ("fixed", {}), "fixed_k2": ("fixed", {"k": 2}), "threshold": ("threshold", {}),
    "threshold_trust": ("threshold", {"tau_extend": 0.3, "tau_trust": 0.8, "k_max": 5}),
    "entropy": ("entropy", {}), "entropy_tight": ("entropy", {"max_entropy": 0.5, "k_max": 4}),
    "heuristic": ("heuristic", {}), "heuristic_2": ("heuristic", {"k_init": 2, "k_max": 6}),
    "typical": ("typical", {}), "typical_loose": ("typical", {"eps": 0.2, "k": 3}),
    "topk_relaxed": ("topk_relaxed", {}), "topk_relaxed_2": ("topk_relaxed", {"k_top": 2, "delta": 0.5, "k": 5}),
    "calibrated": ("calibrated", {}),
}
ADDED = ("chain_mismatch", "confidence_tolerance")  # summary fields added after the digests (issue 14)
RUNS = {"plain": {}, "short": {"max_new_tokens": 17}, "shallow": {"max_draft": 3}}


def _traces():
    return {"t0": synthetic_trace(n_prompts=6, max_new_tokens=40, k_max=6, seed=11),
            "eos": synthetic_trace(n_prompts=6, max_new_tokens=40, k_max=6, seed=12, eos_ids=(5, 7, 9))}


def digests() -> dict[str, str]:
    """{"<trace>/<case>/<run>": sha256 of repr((prompts, sorted summary items))[:16]}."""
    out = {}
    for tname, trace in _traces().items():
        for case, (name, params) in CASES.items():
            for run, kw in RUNS.items():
                res = replay(name, trace, **kw, **params)
                summary = {k: v for k, v in res.summary.items() if k not in ADDED}
                text = repr((res.prompts, sorted(summary.items())))
                out[f"{tname}/{case}/{run}"] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return out


DIGESTS: dict[str, str] = {
    "t0/ar/plain": "444d89f6e0614c9c", "t0/ar/short": "62a69625d517f9ff", "t0/ar/shallow": "3a0537d25d6a8db9",
    "t0/fixed/plain": "4e09aa501ef22884", "t0/fixed/short": "1ca5455e09a2355e", "t0/fixed/shallow": "0d714bc65c7c1429",
    "t0/fixed_k2/plain": "ac33874510ba4786", "t0/fixed_k2/short": "446222d422626da6", "t0/fixed_k2/shallow": "18aa15fda9f0d799",
    "t0/threshold/plain": "68e10f80bd5db658", "t0/threshold/short": "ddd0afddb6346080", "t0/threshold/shallow": "9dffc92ae4dd0242",
    "t0/threshold_trust/plain": "54613139d75ba73b", "t0/threshold_trust/short": "21bfe1c731ecec8b", "t0/threshold_trust/shallow": "6b63250641b4cdbc",
    "t0/entropy/plain": "7d98d3cbdfcdfc60", "t0/entropy/short": "8309eb0a96bd2457", "t0/entropy/shallow": "5a2f622744e4b6cd",
    "t0/entropy_tight/plain": "a216f23df045acf4", "t0/entropy_tight/short": "7f0167b16897a018", "t0/entropy_tight/shallow": "3d9042f33159ee4f",
    "t0/heuristic/plain": "ea7bbe5d388babec", "t0/heuristic/short": "5e505d8362d61c8f", "t0/heuristic/shallow": "7ecd77d76fc7caf1",
    "t0/heuristic_2/plain": "014d9626eee8457b", "t0/heuristic_2/short": "bcba09463ce1d3cd", "t0/heuristic_2/shallow": "86bad482b5a8b8f5",
    "t0/typical/plain": "4f9272c6233e49f6", "t0/typical/short": "f6aca8f9189f0e51", "t0/typical/shallow": "39e96c32fc2f9ef4",
    "t0/typical_loose/plain": "4cfb03fa32ee4979", "t0/typical_loose/short": "0d65720a5ff305fb", "t0/typical_loose/shallow": "4978f4d46d0622c8",
    "t0/topk_relaxed/plain": "38f3d8ae1f6532cc", "t0/topk_relaxed/short": "d2bb6aa7d693d55e", "t0/topk_relaxed/shallow": "de95d78dc5e1483b",
    "t0/topk_relaxed_2/plain": "e7c3dceddb0f9919", "t0/topk_relaxed_2/short": "58eb1c06a7a36576", "t0/topk_relaxed_2/shallow": "6809015986b55f92",
    "t0/calibrated/plain": "d348daaa9d2f432c", "t0/calibrated/short": "99aa0b19c50672fa", "t0/calibrated/shallow": "e671daa561dd688f",
    "eos/ar/plain": "1a68af4c83c269f5", "eos/ar/short": "7eed21c1f5c58c30", "eos/ar/shallow": "14480cfcf3abcbdb",
    "eos/fixed/plain": "3fba2dd810a6ce6f", "eos/fixed/short": "d0df2b0eb0490226", "eos/fixed/shallow": "7da84b614c85b65c",
    "eos/fixed_k2/plain": "55bc0bc64acc460d", "eos/fixed_k2/short": "12ad167a6d39c912", "eos/fixed_k2/shallow": "892eb94862d6c090",
    "eos/threshold/plain": "b24ef046b784a123", "eos/threshold/short": "607a1a417bd799da", "eos/threshold/shallow": "cf560e9b7682fdd0",
    "eos/threshold_trust/plain": "5c49f95468134161", "eos/threshold_trust/short": "aa69a4e58e586b05", "eos/threshold_trust/shallow": "5eeecf4387530cee",
    "eos/entropy/plain": "affb09682a89f570", "eos/entropy/short": "f6e7b465a305e274", "eos/entropy/shallow": "0e7b99ca469fb515",
    "eos/entropy_tight/plain": "d87a03054b99ef66", "eos/entropy_tight/short": "45669c78c7ee6e0a", "eos/entropy_tight/shallow": "930c0756d36360b2",
    "eos/heuristic/plain": "9036d8a976a8c4be", "eos/heuristic/short": "33a21d535171c77a", "eos/heuristic/shallow": "97e65f05d48286d1",
    "eos/heuristic_2/plain": "da1aceb4667f5f70", "eos/heuristic_2/short": "719dc90c63a925ac", "eos/heuristic_2/shallow": "0f21ba607b44b9c1",
    "eos/typical/plain": "2d9e0508af27b74f", "eos/typical/short": "b5864398b40c735c", "eos/typical/shallow": "e0f2ed91992ceef5",
    "eos/typical_loose/plain": "b493fca693074485", "eos/typical_loose/short": "2601ac0f722e8e0c", "eos/typical_loose/shallow": "3d9faad7e916a160",
    "eos/topk_relaxed/plain": "216850dc3d03f66d", "eos/topk_relaxed/short": "6536649fff72bd0f", "eos/topk_relaxed/shallow": "410481b00732517f",
    "eos/topk_relaxed_2/plain": "04be7d111540c9b3", "eos/topk_relaxed_2/short": "8f81776684207750", "eos/topk_relaxed_2/shallow": "be530225988d614a",
    "eos/calibrated/plain": "62f768924efc479e", "eos/calibrated/short": "1576014af7f54fd6", "eos/calibrated/shallow": "13ef277c23828ab8",
}


def test_replay_results_are_unchanged():
    got = digests()
    assert got.keys() == DIGESTS.keys()
    changed = sorted(k for k in got if got[k] != DIGESTS[k])
    assert not changed, f"replay results changed for {changed}"


@pytest.mark.parametrize("seed", [0, 1])
def test_the_digest_sees_a_change(seed):
    """Drafts made right in one prompt change its replay (so the digests can fail)."""
    trace = synthetic_trace(n_prompts=2, max_new_tokens=20, k_max=4, seed=seed)
    before = repr(replay("fixed", trace, k=3).prompts)
    rows, k = trace.draft.shape[1:]
    right = np.minimum(np.arange(rows)[:, None] + np.arange(1, k + 1)[None, :], trace.max_new_tokens - 1)
    trace.draft[0] = trace.tokens[0, right]  # d_j at row n guesses new token n + j: every draft of prompt 0 right
    trace.__dict__.pop("rows", None)
    assert repr(replay("fixed", trace, k=3).prompts) != before
