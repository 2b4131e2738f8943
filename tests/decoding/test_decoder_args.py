"""Arguments a user can get wrong: ``DecodeError`` (a ``ValueError``) with one line saying what is wrong and allowed."""

from __future__ import annotations

import math

import pytest

from specpolicy.decoding import DecodeError, generate

BAD = [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": -3}, "max_new_tokens"),
    ({"max_new_tokens": 2.5}, "max_new_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": -0.2}, "top_p"),
    ({"top_p": math.nan}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"max_draft": -1}, "max_draft"),
]


@pytest.fixture(scope="module")
def model(tiny):
    return tiny(seed=0, k=1)


@pytest.mark.parametrize(("kwargs", "what"), BAD, ids=[f"{next(iter(k))}={next(iter(k.values()))}" for k, _ in BAD])
def test_bad_argument_is_one_line_decode_error(model, kwargs, what):
    with pytest.raises(DecodeError) as err:
        generate(model, [1, 2, 3], "fixed", **kwargs)
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "\n" not in msg and msg.startswith(what) and "allowed" in msg


@pytest.mark.parametrize("prompt", [[], "", ()])
def test_empty_prompt(model, prompt):
    with pytest.raises(DecodeError, match=r"^prompt is empty; allowed: .*$"):
        generate(model, prompt, "ar", max_new_tokens=4)


def test_text_prompt_without_tokenizer(model):
    assert model.tokenizer is None
    with pytest.raises(DecodeError, match=r"^prompt is text but the model has no tokenizer; allowed: .*token ids"):
        generate(model, "def f(", "ar", max_new_tokens=4)


def test_edge_values_are_accepted(model):
    res = generate(model, [1, 2, 3], "fixed", max_new_tokens=1, top_p=1.0, top_k=0, max_draft=0, temperature=0.0)
    assert len(res.token_ids) == 1 and res.steps == ()
    res = generate(model, [1], "fixed", max_new_tokens=3, temperature=0.5, top_p=1e-6, top_k=1, seed=0)
    greedy = generate(model, [1], "fixed", max_new_tokens=3)
    assert res.token_ids == greedy.token_ids  # top_k=1 (or a vanishing top_p) sampling is greedy


def test_unknown_policy_is_reported(model):
    with pytest.raises(ValueError, match="did you mean 'fixed'"):
        generate(model, [1, 2, 3], "fixd", max_new_tokens=4)
    with pytest.raises(ValueError, match="unknown parameter kk"):
        generate(model, [1, 2, 3], "fixed", max_new_tokens=4, kk=3)
