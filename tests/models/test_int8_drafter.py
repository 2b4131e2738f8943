"""The int8 MTP drafter (``drafter="mtp:int8"``): its layers compute the float32 function up to int8 rounding, it
is another drafter by name (traces, calibrators, summaries), its output stays lossless (greedy output identical to
``ar`` for every lossless policy), it declines in one line where it cannot run, and the spec parser knows it."""

import dataclasses

import pytest
import torch

from specpolicy import generate, load_model
from specpolicy.decoding.drafters import drafter_for
from specpolicy.decoding.engine import DecodeError, check_engine, mtp_layer_forward
from specpolicy.models.lean import int8_unsupported
from specpolicy.models.loading import DrafterSpecError, parse_drafter_spec
from specpolicy.runs.checks import drafter_label_of
from specpolicy.testing.models import small_model

pytestmark = pytest.mark.skipif(int8_unsupported(torch.zeros(1)) is not None, reason="no fbgemm int8 kernels here")

PROMPT = "import os\nimport sys\n\n\ndef main(argv):\n    "


@pytest.fixture(scope="module")
def tiny8():
    return load_model("tiny", drafter="mtp:int8")


@torch.inference_mode()
def test_layers_match_float32_up_to_int8_rounding(tiny8):
    mtp = tiny8.drafter
    for layer_idx in range(len(mtp.layers)):
        ref, q = mtp_layer_forward(mtp, layer_idx, "packed"), mtp_layer_forward(mtp, layer_idx, "packed", int8=True)
        g = torch.Generator().manual_seed(layer_idx)
        h = torch.randn(1, 24, 320, generator=g)
        ids = torch.randint(5, 4000, (1, 24), generator=g)
        lo, depth, agree = 0, layer_idx + 1, 0
        for blk in (6, 1, 3, 1, 2):
            pos = torch.arange(lo + depth, lo + depth + blk)[None]
            a = ref.forward(h[:, lo : lo + blk], pos, ids[:, lo : lo + blk])
            b = q.forward(h[:, lo : lo + blk], pos, ids[:, lo : lo + blk])
            assert not torch.equal(a, b)  # int8 kernels, not the float32 ones
            assert (b - a).norm() / a.norm() < 0.05
            la, lb = ref.logits(a[:, -1]), q.logits(b[:, -1])
            assert (lb - la).norm() / la.norm() < 0.05
            agree += int(la.argmax() == lb.argmax())
            lo += blk
        assert agree >= 4  # the same top draft almost everywhere


def test_another_drafter_by_name(tiny8):
    assert parse_drafter_spec("mtp:int8") == ("mtp", "int8")
    assert (tiny8.drafter_name, tiny8.drafter_arg, tiny8.drafter_label) == ("mtp", "int8", "mtp-int8")
    assert drafter_for(tiny8).name == "mtp-int8" and drafter_for(load_model("tiny")).name == "mtp"
    assert drafter_label_of({"name": "mtp", "path": "int8"}) == "mtp-int8"
    with pytest.raises(DrafterSpecError, match="allowed: mtp, mtp:int8"):
        parse_drafter_spec("mtp:int4")


@pytest.mark.parametrize("policy,params", [("fixed", {"k": 3}), ("fixed", {"k": 6}), ("threshold", {}),
                                           ("goodput", {})])
def test_lossless_with_int8_drafts(tiny8, policy, params):
    ar = generate(tiny8, PROMPT, "ar", max_new_tokens=64, engine="packed")
    res = generate(tiny8, PROMPT, policy, max_new_tokens=64, engine="packed", **params)
    assert res.token_ids == ar.token_ids
    assert res.stats.tpf > 1.5  # it really drafted, and its drafts are mostly accepted
    assert res.stats.lossy_tokens == 0


def test_declines_in_one_line():
    m = dataclasses.replace(small_model(), drafter_arg="int8")  # float64 (a copy: small_model's is shared)
    assert "float32" in int8_unsupported(next(m.drafter.parameters()))
    with pytest.raises(DecodeError, match=r"int8 MTP drafter cannot run here \(dtype torch.float64.*allowed: drafter=mtp"):
        check_engine(m, "auto")
    with pytest.raises(DecodeError, match="int8 MTP drafter cannot run here"):
        generate(m, [1, 2, 3], "fixed", k=2, max_new_tokens=4)


def test_its_trace_says_replay_is_approximate(tiny8):
    from specpolicy.replay import replay
    from specpolicy.replay.record import record_trace
    from specpolicy.replay.simulate import NOTE_BLOCK

    prompt = tiny8.tokenizer(PROMPT)["input_ids"]
    trace = record_trace(tiny8, [prompt], max_new_tokens=12, probe_depth=3, cost_reps=1, progress=False,
                         engine="packed")
    assert (trace.drafter, trace.block_invariant) == ("mtp-int8", False)
    summary = replay("fixed", trace, k=3).summary
    assert summary["approximate"] and NOTE_BLOCK in summary["notes"]
    plain = record_trace(load_model("tiny"), [prompt], max_new_tokens=12, probe_depth=3, cost_reps=1,
                         progress=False, engine="packed")
    assert plain.block_invariant and not replay("fixed", plain, k=3).summary["approximate"]
