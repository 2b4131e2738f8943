"""Tokenizer round-trip and seeded prompt sampling."""

import pytest

from specpolicy.data import load_corpus, sample_prompts
from specpolicy.data.tokenizer import as_transformers, train_tokenizer
from specpolicy.models.loading import load_model

CODE = [
    "def f(x):\n    return x + 1\n",
    "class A:\n    '''Doc.'''\n\n    def __init__(self):\n        self.x = {'a': [1, 2]}\n",
    "    # unicode: ünïcödé ✓\n\tindent_with_tab = r'\\n'\n",
]


@pytest.fixture(scope="module")
def small_tokenizer():
    corpus = load_corpus()
    texts = corpus.texts("train")[:20]
    return as_transformers(train_tokenizer(texts, vocab_size=400))


def test_trained_tokenizer_round_trips(small_tokenizer):
    for text in CODE:
        ids = small_tokenizer.encode(text, add_special_tokens=False)
        assert small_tokenizer.decode(ids) == text
    assert len(small_tokenizer) <= 400 + 2
    assert small_tokenizer.eos_token == "<|endoftext|>"


def test_shipped_tokenizer_round_trips():
    tok = load_model("tiny").tokenizer
    for text in CODE:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_prompt_sampler_is_seeded_and_uses_the_test_split(small_tokenizer):
    corpus = load_corpus()
    a = sample_prompts(corpus, small_tokenizer, n=5, prompt_tokens=32, seed=3)
    b = sample_prompts(corpus, small_tokenizer, n=5, prompt_tokens=32, seed=3)
    c = sample_prompts(corpus, small_tokenizer, n=5, prompt_tokens=32, seed=4)
    assert [p.id for p in a] == [p.id for p in b] and [p.id for p in a] != [p.id for p in c]
    test_paths = {d.path for d in corpus.documents("test")}
    assert all(p.source in test_paths and len(p.ids) == 32 for p in a)
    assert len({p.id for p in a}) == 5
    with pytest.raises(ValueError, match="n_prompts"):
        sample_prompts(corpus, small_tokenizer, n=0)
