"""Tiny random MTP models for the decoder tests (``specpolicy.testing.small_model``: float64, sharpened head, tied
drafter; see that module for the knobs), and the Hugging Face greedy reference they are checked against.

Models are float64, so a forward over a block ``[t_n, d_1..d_m]`` and m+1 one-token forwards cannot flip an argmax
through rounding: greedy decoding must match ``target.generate(do_sample=False)`` token for token.
"""

from __future__ import annotations

import pytest
import torch

from specpolicy.testing import greedy_accounting, hf_greedy, shape_model, small_model

VOCAB = 64


def init_moe_drafter(model) -> None:
    """``build_mtp_model`` must initialise the MoE experts/router of the MTP layers (``MtpModel.__init__`` leaves them
    as ``torch.empty``; NaN / 1e38 were seen before the loader re-ran the target's initialiser on them)."""
    for name, prm in model.drafter.layers.named_parameters():
        assert torch.isfinite(prm).all() and prm.abs().max() < 1e3, f"uninitialised MTP weight {name}"


def make_tiny(seed: int = 0, k: int = 2, vocab: int = VOCAB, hidden: int = 32, intermediate: int = 64,
              sharpen: float = 20.0, tie: float = 1.0, context: float = 0.5, eos_token_id=None):
    """A cached tiny Llama + K MTP layers (``small_model``)."""
    return small_model(seed, k, vocab, hidden, intermediate, sharpen, tie, context, eos_token_id)


def strip_timings(result) -> tuple:
    """A result minus wall-clock fields: what two runs with the same seed must agree on exactly."""
    steps = tuple({k: v for k, v in s.to_dict().items() if not k.endswith("_s")} for s in result.steps)
    stats = {k: v for k, v in result.stats.to_dict().items() if not k.endswith("_s") and k != "tokens_per_s"}
    return result.token_ids, result.provenance, result.finished_by, steps, stats


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
    return greedy_accounting
