"""The trace format: indexing against the decoder, save/load, subsets, the cost model, the synthetic trace."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from specpolicy import generate
from specpolicy.replay import ChainProbe, CostModel, TraceError, load_trace, replay, synthetic_trace
from specpolicy.replay.record import eos_ignored, record_trace

N, K = 12, 4


@pytest.fixture(scope="module")
def small(model, prompts):
    return record_trace(model, prompts[:4], N, K, cost_reps=2, progress=False)


def test_rows_are_the_chain_drafted_at_that_position(model, prompts, small):
    """Row n holds what the decoder drafts when new token n is the last committed one: the drafts a ``fixed(K)``
    decode makes at position p are row p-1, token for token and confidence for confidence."""
    for i, ids in enumerate(prompts[:4]):
        assert small.tokens[i].tolist() == list(generate(model, ids, "ar", max_new_tokens=N).token_ids)
        res = generate(model, ids, "fixed", k=K, max_new_tokens=N)
        for s in res.steps:
            n, m = s.position - 1, len(s.drafts)
            assert list(s.drafts) == small.draft[i, n, :m].tolist()
            assert list(s.confidence) == small.q[i, n, :m].tolist()
            assert list(s.entropy) == small.entropy[i, n, :m].tolist()
            assert list(s.margin) == small.margin[i, n, :m].tolist()
            assert list(s.target_tokens) == small.tokens[i, n + 1 : n + 1 + len(s.target_tokens)].tolist()


def test_chain_is_what_the_verify_forward_sees(model, prompts, small):
    """target_chain[n, j] is the target's token after [t_n, d_1..d_j]: on the recorded path it is the next recorded
    token; and a fixed(K) decode's verify forward (its ``target_tokens``) agrees wherever it walked."""
    nxt = _truth(small)  # [P, N-1, K+1]: t_{n+j+1}
    right = small.draft == nxt[:, :, :K]
    path = np.concatenate([np.ones(right.shape[:2] + (1,), bool), np.cumprod(right, 2).astype(bool)], 2)
    valid = path & (nxt >= 0)
    assert (small.target_chain[valid] == nxt[valid]).all() and valid[:, :, 1].any()
    assert small.meta["chain_first_token_mismatch"] == 0
    for i, ids in enumerate(prompts[:4]):
        for s in generate(model, ids, "fixed", k=K, max_new_tokens=N).steps:
            n = s.position - 1
            assert list(s.target_tokens) == small.target_chain[i, n, : len(s.target_tokens)].tolist()
    ok = small.draft == small.target_chain[:, :, :K]
    assert ((small.p_rank == 0) == ok).all()  # rank 0 <=> the draft is the target's argmax after its prefix
    assert (small.p_draft <= small.p_top1 + 1e-7).all() and (small.p_entropy >= -1e-6).all()


def _truth(tr):
    """[P, N-1, K+1]: the recorded token each chain position guesses (t_{n+j+1}), -1 past the end."""
    P, N = tr.tokens.shape
    idx = np.arange(N - 1)[:, None] + np.arange(1, tr.k_max + 2)[None, :]
    return np.where(idx <= N - 1, tr.tokens[:, np.minimum(idx, N - 1)], -1)



def test_save_load_roundtrip(tmp_path, small):
    path = small.save(tmp_path / "t.safetensors")
    back = load_trace(path)
    for k in ("tokens", "draft", "q", "entropy", "margin", "target_chain", "p_draft", "p_rank", "p_top1", "p_entropy"):
        np.testing.assert_array_equal(getattr(back, k), getattr(small, k))
    assert back.prompt_ids == small.prompt_ids and back.cost == small.cost and back.meta == small.meta
    assert back.draft.dtype == np.int32 and back.q.dtype == np.float32
    assert replay("heuristic", back).summary == replay("heuristic", small).summary


def test_load_errors(tmp_path):
    with pytest.raises(TraceError, match="does not exist"):
        load_trace(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a trace")
    with pytest.raises(TraceError, match="not a safetensors trace"):
        load_trace(tmp_path / "junk.safetensors")
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(TraceError, match="not a specpolicy trace"):
        load_trace(tmp_path / "plain.safetensors")


def test_chain_probe_refuses_a_drafting_policy_and_missing_rows(model, prompts):
    with pytest.raises(TraceError, match="record with a policy that never drafts"):
        generate(model, prompts[0], "fixed", k=2, max_new_tokens=6, probe=ChainProbe(2))
    probe = ChainProbe(2)
    generate(model, prompts[0], "ar", max_new_tokens=6, probe=probe)
    assert probe.arrays(6)["draft"].shape == (5, 2)
    with pytest.raises(TraceError, match="steps cover 5 of 7 positions"):
        probe.arrays(8)


def test_eos_is_ignored_while_recording_and_restored(model):
    saved = model.target.generation_config.eos_token_id
    model.target.generation_config.eos_token_id = 7
    try:
        with eos_ignored(model) as (quiet, eos):
            assert eos == [7] and quiet.target.generation_config.eos_token_id is None and quiet.tokenizer is None
        assert model.target.generation_config.eos_token_id == 7
    finally:
        model.target.generation_config.eos_token_id = saved


def test_cost_model():
    cm = CostModel(t_target=(0.010, 0.011, 0.013), t_mtp=0.002)
    assert cm.c(1) == 1.0 and cm.c(3) == pytest.approx(1.3)
    assert cm.step_s(0) == 0.010 and cm.step_s(2) == pytest.approx(0.013 + 0.004)
    assert cm.forward_s(5) == pytest.approx(0.013 + 2 * 0.002)  # linear past the measured range
    assert cm.to_dict()["c"] == pytest.approx([1.0, 1.1, 1.3])


def test_synthetic_trace_is_consistent():
    tr = synthetic_trace(5, 30, 6, seed=3)
    assert tr.tokens.shape == (5, 30) and tr.draft.shape == (5, 29, 6) and tr.target_chain.shape == (5, 29, 7)
    right = tr.draft[:, :, 0] == tr.tokens[:, 1:]
    assert (tr.target_chain[:, :, 0] == tr.tokens[:, 1:]).all()
    assert ((tr.p_rank[:, :, 0] == 0) == right).all()
    assert 0.4 < right.mean() < 0.95
    with pytest.raises(TraceError, match="shape"):
        type(tr)(tr.prompt_ids, tr.tokens, tr.draft[:, :-1], tr.q, tr.entropy, tr.margin, tr.target_chain,
                 tr.p_draft, tr.p_rank, tr.p_top1, tr.p_entropy, tr.cost)


def test_a_trace_of_another_format_version_is_refused(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    path = synthetic_trace(2, 8, 2, seed=0).save(tmp_path / "t.safetensors")
    with safe_open(str(path), framework="numpy") as f:
        header = json.loads(f.metadata()["specpolicy_trace"])
    header["version"] = 0
    save_file(load_file(str(path)), str(tmp_path / "old.safetensors"), metadata={"specpolicy_trace": json.dumps(header)})
    with pytest.raises(TraceError, match="has version 0 .* allowed: version 1"):
        load_trace(tmp_path / "old.safetensors")


def test_a_half_precision_trace_is_never_called_exact():
    from specpolicy.replay.simulate import NOTE_HALF

    tr = synthetic_trace(3, 16, 4, seed=2)
    assert replay("fixed", tr).summary["approximate"] is False and replay("fixed", tr).summary["dtype"] == "float32"
    half = type(tr)(tr.prompt_ids, tr.tokens, tr.draft, tr.q, tr.entropy, tr.margin, tr.target_chain, tr.p_draft,
                    tr.p_rank, tr.p_top1, tr.p_entropy, tr.cost, {**tr.meta, "dtype": "bfloat16"})
    s = replay("fixed", half).summary
    assert s["approximate"] is True and NOTE_HALF in s["notes"] and s["dtype"] == "bfloat16"


def test_the_cost_models_overhead_terms_survive_save_and_load(tmp_path):
    cost = CostModel(t_target=(0.01, 0.011), t_mtp=0.002, t_overhead=0.0007, t_overhead_draft=0.0001)
    trace = dataclasses.replace(synthetic_trace(n_prompts=1, max_new_tokens=8, k_max=2), cost=cost)
    back = load_trace(trace.save(tmp_path / "t.safetensors"))
    assert back.cost == cost and back.cost.step_s(2) == cost.step_s(2) > cost.compute_s(2)
