"""Corpus (stdlib, split by module), tokenizer training and seeded prompt sampling."""

from .corpus import SPLITS, Corpus, Document, SplitConfig, load_corpus, split_of
from .prompts import Prompt, sample_prompts

__all__ = ["SPLITS", "Corpus", "Document", "SplitConfig", "load_corpus", "split_of", "Prompt", "sample_prompts"]
