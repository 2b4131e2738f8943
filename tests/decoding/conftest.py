"""Tiny random MTP models for the decoder tests, and the Hugging Face greedy reference they are checked against.

Models are float64, so a forward over a block ``[t_n, d_1..d_m]`` and m+1 one-token forwards cannot flip an argmax
through rounding: greedy decoding must match ``target.generate(do_sample=False)`` token for token.

A random model has a flat next-token distribution and a drafter that never agrees with the target. Two knobs make
the tests exercise accepted AND rejected drafts:

- ``sharpen`` scales the LM head (shared by target and drafter), so p and q are peaked, as in a trained model;
- ``tie`` pulls each MTP layer's ``eh_proj`` towards ``[I, 0]`` (pass the token embedding through, ignore the
  hidden state). The target is then close to a bigram model (``context`` scales its attention/MLP outputs), and a
  tied drafter reading ``emb(t_{i+j})`` predicts roughly the target's next token after ``t_{i+j}``: drafts are often,
  not always, right. ``tie=0`` keeps a random drafter (q far from p: what the sampling power checks need).

The fixtures return plain functions; models are cached per argument tuple (the decoder never mutates them).
"""

from __future__ import annotations

import functools

import pytest
import torch

from specpolicy.models.loading import TinyConfig, build_mtp_model

VOCAB = 64


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny float64 forwards are ~10x slower with OpenMP threads on a loaded 2-core machine (DESIGN: measuring)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def init_moe_drafter(model) -> None:
    """``build_mtp_model`` must initialise the MoE experts/router of the MTP layers (``MtpModel.__init__`` leaves them
    as ``torch.empty``; NaN / 1e38 were seen before the loader re-ran the target's initialiser on them)."""
    for name, prm in model.drafter.layers.named_parameters():
        assert torch.isfinite(prm).all() and prm.abs().max() < 1e3, f"uninitialised MTP weight {name}"


def shape_model(model, sharpen: float = 20.0, tie: float = 1.0, context: float = 0.5):
    """Float64; sharpen the shared head; scale the target's context mixing; tie eh_proj towards [I, 0]. In place."""
    model.target.double()
    model.drafter.double()
    hidden = model.target.config.get_text_config().hidden_size
    with torch.no_grad():
        model.target.get_output_embeddings().weight.mul_(sharpen)
        for layer in model.target.get_decoder().layers:
            layer.self_attn.o_proj.weight.mul_(context)
            down = getattr(layer.mlp, "down_proj", None)
            if isinstance(down, torch.nn.Linear):
                down.weight.mul_(context)
        for layer in model.drafter.layers:
            w = layer.eh_proj.weight  # [H, 2H]: input [enorm(emb(t)), hnorm(h)]
            w.mul_(1.0 - tie)
            w[:, :hidden] += tie * torch.eye(hidden, dtype=w.dtype)
    return model


@functools.lru_cache(maxsize=64)
def _tiny(seed, k, vocab, hidden, intermediate, sharpen, tie, context, eos_token_id):
    cfg = TinyConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=intermediate,
        num_mtp_layers=k,
        max_position_embeddings=256,
    ).to_hf(eos_token_id=list(eos_token_id) if isinstance(eos_token_id, tuple) else eos_token_id)
    model = build_mtp_model(cfg, tokenizer=None, seed=seed)
    return shape_model(model, sharpen=sharpen, tie=tie, context=context)


def make_tiny(
    seed: int = 0,
    k: int = 2,
    vocab: int = VOCAB,
    hidden: int = 32,
    intermediate: int = 64,
    sharpen: float = 20.0,
    tie: float = 1.0,
    context: float = 0.5,
    eos_token_id=None,
):
    """A cached tiny Llama + K MTP layers (see the module docstring for the knobs); a tuple ``eos_token_id`` becomes
    a list of EOS ids in the config. The weights depend on ``seed`` (and sizes) only, not on ``eos_token_id``."""
    return _tiny(seed, k, vocab, hidden, intermediate, sharpen, tie, context, eos_token_id)


def hf_greedy(model, prompt: list[int], max_new_tokens: int, eos_token_id=None) -> tuple[int, ...]:
    """New tokens of ``target.generate(do_sample=False)``: the reference greedy output.

    ``eos_token_id=None`` means: whatever the model's generation config says (HF's own default).
    """
    kw = {} if eos_token_id is None else {"eos_token_id": eos_token_id}
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.target.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=0,
            **kw,
        )
    return tuple(out[0, len(prompt) :].tolist())


def strip_timings(result) -> tuple:
    """A result minus wall-clock fields: what two runs with the same seed must agree on exactly."""
    steps = tuple({k: v for k, v in s.to_dict().items() if not k.endswith("_s")} for s in result.steps)
    stats = {k: v for k, v in result.stats.to_dict().items() if not k.endswith("_s") and k != "tokens_per_s"}
    return result.token_ids, result.provenance, result.finished_by, steps, stats


def check_lossless(res, max_new: int) -> None:
    """What every lossless greedy result satisfies, whatever the policy (accounting + per-step bookkeeping)."""
    stats = res.stats
    assert set(res.provenance) <= {"target", "verified"}
    assert stats.lossy_tokens == stats.trusted_tokens == stats.relaxed_tokens == 0
    assert stats.shadow_rejects == stats.shadow_accepts == 0
    assert stats.new_tokens == len(res.token_ids) <= max_new
    assert stats.target_forwards == 1 + stats.steps == 1 + len(res.steps)
    assert stats.tpf == pytest.approx(stats.new_tokens / stats.target_forwards)
    assert sum(len(s.committed) for s in res.steps) + 1 == stats.new_tokens
    assert stats.accepted == sum(s.accepted for s in res.steps) == res.provenance.count("verified")
    assert stats.drafted == sum(len(s.drafts) for s in res.steps)
    assert tuple(t for s in res.steps for t in s.committed) == res.token_ids[1:]
    for s in res.steps:
        # greedy verdicts are exactly "draft == target's argmax"; the committed drafts come first, then one token
        # of the target's (correction or bonus), unless EOS cut the block
        assert s.verdicts == tuple(d == t for d, t in zip(s.drafts, s.target_tokens))
        assert s.committed[: s.accepted] == s.drafts[: s.accepted]
        if res.finished_by == "length" or s is not res.steps[-1]:
            assert s.provenance == ("verified",) * s.accepted + ("target",)
            assert s.committed[-1] == s.target_tokens[s.accepted]


# The helpers reach the tests as session fixtures (test modules here are not a package, so they cannot import this).
@pytest.fixture(scope="session")
def tiny():
    return make_tiny


@pytest.fixture(scope="session")
def shape():
    """``shape(model, init_moe=False, **knobs)``: (initialise MoE MTP experts,) float64, sharpen, tie. In place."""

    def _shape(model, init_moe: bool = False, **knobs):
        if init_moe:
            init_moe_drafter(model)
        return shape_model(model, **knobs)

    return _shape


@pytest.fixture(scope="session")
def hf_ref():
    return hf_greedy


@pytest.fixture(scope="session")
def no_timings():
    return strip_timings


@pytest.fixture(scope="session")
def lossless_checks():
    return check_lossless
