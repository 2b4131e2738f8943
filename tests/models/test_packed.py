"""The packed engine (``engine="packed"``: the lean forward with oneDNN-packed projections) computes the same
function as the lean forward up to float32 rounding, through blocks and crops, for the target, the MTP layers and
their heads; it declines what it cannot run in one line; its packed weights follow in-place weight changes. That its
greedy outputs equal transformers' on the shipped model is checked in tests/decoding/test_shipped_model.py."""

import gc

import pytest
import torch

from specpolicy import generate, load_model
from specpolicy.decoding.engine import DecodeError, causal_forward, mtp_layer_forward
from specpolicy.models.lean import LeanTarget, _pack, _packed_linear, packed_unsupported
from specpolicy.testing.models import small_model

BLOCKS = (1, 3, 1, 5, 2, 1, 7, 4, 1)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


@torch.inference_mode()
def test_target_forward_matches_lean_through_blocks_and_crops(tiny):
    lean, packed = causal_forward(tiny.target, "lean"), causal_forward(tiny.target, "packed")
    assert (lean.kind, type(packed.layers[0].packed)) == ("lean", tuple)
    ids = torch.randint(5, 4000, (1, 120), generator=torch.Generator().manual_seed(0))
    a, b = lean.forward(ids[:, :40]), packed.forward(ids[:, :40])
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    p, differs = 40, False
    for blk in BLOCKS:
        a, b = lean.forward(ids[:, p : p + blk]), packed.forward(ids[:, p : p + blk])
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
        la, lb = lean.logits(a), packed.logits(b)
        torch.testing.assert_close(lb, la, rtol=1e-4, atol=1e-4)
        differs |= not torch.equal(la, lb)
        if blk > 1:  # a rejected block: keep one token of it, as the decoder does
            lean.crop(p + 1)
            packed.crop(p + 1)
            p += 1
        else:
            p += blk
    assert differs, "the packed engine is meant to be another kernel: identical logits mean it did not run"


@torch.inference_mode()
def test_mtp_layers_match_lean(tiny):
    mtp = tiny.drafter
    for layer_idx in range(len(mtp.layers)):
        lean, packed = mtp_layer_forward(mtp, layer_idx, "lean"), mtp_layer_forward(mtp, layer_idx, "packed")
        g = torch.Generator().manual_seed(layer_idx)
        h = torch.randn(1, 30, 320, generator=g)
        ids = torch.randint(5, 4000, (1, 30), generator=g)
        lo, depth = 0, layer_idx + 1
        for blk in (6, 1, 3, 1, 2):
            pos = torch.arange(lo + depth, lo + depth + blk)[None]
            a = lean.forward(h[:, lo : lo + blk], pos, ids[:, lo : lo + blk])
            b = packed.forward(h[:, lo : lo + blk], pos, ids[:, lo : lo + blk])
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(packed.logits(b[:, -1]), lean.logits(a[:, -1]), rtol=1e-4, atol=1e-4)
            lo += blk


def test_declines_in_one_line():
    m = small_model()  # float64
    assert "float32" in packed_unsupported(next(m.target.parameters()))
    with pytest.raises(DecodeError, match=r"engine='packed' cannot run this target \(dtype torch.float64.*allowed"):
        generate(m, [1, 2, 3], "ar", max_new_tokens=2, engine="packed")
    with pytest.raises(DecodeError, match="allowed: auto, lean, packed, transformers"):
        generate(m, [1, 2, 3], "ar", max_new_tokens=2, engine="fast")


def test_packed_weights_follow_in_place_changes():
    w = torch.nn.Parameter(torch.randn(64, 32), requires_grad=False)  # a weight, as in a model
    x = torch.randn(1, 3, 32)
    with torch.inference_mode():
        first = _packed_linear(x, _pack(w))
    torch.testing.assert_close(first, torch.nn.functional.linear(x, w), rtol=1e-5, atol=1e-5)
    assert _pack(w) is _pack(w)  # packed once
    w.mul_(2.0)  # e.g. a training step between two evaluations
    with torch.inference_mode():
        torch.testing.assert_close(_packed_linear(x, _pack(w)), 2 * first, rtol=1e-5, atol=1e-5)


def test_a_model_that_ran_packed_still_saves(tiny, tmp_path):
    generate(tiny, [5, 6, 7], "fixed", k=2, max_new_tokens=3, engine="packed")
    torch.save(tiny.target, tmp_path / "target.pt")  # the packed weights are kept beside the model, not on it


def test_packed_weights_go_with_their_model():
    from specpolicy.models import lean

    w = torch.nn.Parameter(torch.randn(16, 8), requires_grad=False)
    _pack(w)
    _pack(w, int8=True)  # the int8 drafter's packing of the same weight is an entry of its own
    keys = [(id(w), False), (id(w), True)]
    assert all(k in lean._PACKED for k in keys)
    del w
    gc.collect()
    assert not any(k in lean._PACKED for k in keys)


def test_lean_target_is_unpacked_by_default(tiny):
    assert all(layer.packed is None for layer in LeanTarget(tiny.target).layers)


def test_a_trace_recorded_on_the_packed_engine_says_so_and_its_chain_agrees(tiny):
    from specpolicy.replay.record import record_trace

    prompt = tiny.tokenizer("def parse(line):\n    ")["input_ids"]
    trace = record_trace(tiny, [prompt], max_new_tokens=12, probe_depth=3, cost_reps=1, progress=False,
                         engine="packed")
    assert trace.meta["engine"] == "packed"
    # the recorder's chain forward and the decoder ran the same engine: the chain's first token is the decoded one
    assert trace.meta["chain_first_token_mismatch"] == 0
    assert (trace.target_chain[0, :, 0] == trace.tokens[0, 1:]).all()
