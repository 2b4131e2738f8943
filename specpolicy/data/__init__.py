"""Corpus (stdlib, split by module; or an installed package's source), tokenizer training, seeded prompt sampling."""

from .corpus import SPLITS, Corpus, Document, SplitConfig, load_corpus, package_corpus, split_of
from .prompts import Prompt, sample_prompts

__all__ = ["SPLITS", "Corpus", "Document", "SplitConfig", "load_corpus", "package_corpus", "split_of", "Prompt", "sample_prompts"]
