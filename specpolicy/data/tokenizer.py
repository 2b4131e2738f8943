"""Byte-level BPE tokenizer for the embedded model, trained with ``tokenizers`` on the corpus' train split.

4096 tokens: Python source compresses to ~3.5 bytes/token at this size, and the output head (vocab x hidden) then costs
about one transformer layer of the tiny model, which keeps one MTP drafting step cheap relative to a target forward.

Example:
    >>> tok = train_tokenizer(corpus.texts("train"), vocab_size=4096)
    >>> hf = as_transformers(tok)               # a PreTrainedTokenizerFast
    >>> hf.decode(hf.encode("def f(x):\n    return x")) == "def f(x):\n    return x"
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def as_transformers(tok: Tokenizer):
    """Wrap a ``tokenizers.Tokenizer`` as a transformers fast tokenizer with EOS/PAD set."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, clean_up_tokenization_spaces=False)
