"""A tiny random MTP model whose drafts are often, not always, right (``specpolicy.testing.small_model``, float64,
vocabulary 96, head sharpened x15, drafter tied at 0.9: acceptance ~40-70% at depth 1, which exercises accepted AND
rejected drafts); and prompts for it.
"""

from __future__ import annotations

import pytest
import torch

from specpolicy.testing import small_model

VOCAB = 96


def tiny_model(seed: int = 0, eos_token_id: int | None = None, sharpen: float = 15.0, tie: float = 0.9):
    return small_model(seed, k=2, vocab=VOCAB, sharpen=sharpen, tie=tie, eos_token_id=eos_token_id,
                       max_positions=512)


def random_prompts(n: int, length: int = 12, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, VOCAB, (length,), generator=g).tolist() for _ in range(n)]


@pytest.fixture(scope="session")
def make_model():
    """``make_model(seed=0, eos_token_id=None)``: test modules here are not a package and cannot import conftest."""
    return tiny_model


@pytest.fixture(scope="session")
def model():
    return tiny_model(seed=0)


@pytest.fixture(scope="session")
def prompts():
    return random_prompts(20, seed=1)
