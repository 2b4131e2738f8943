"""Seeded evaluation prompts drawn from held-out text.

A prompt starts at the beginning of a line of a held-out file and holds ``prompt_tokens`` tokens. The same
(split, seed, n, prompt_tokens, tokenizer) always gives the same prompts.

Example:
    >>> prompts = sample_prompts(corpus, tokenizer, n=20, prompt_tokens=64, seed=0)
    >>> prompts[0].ids[:5], prompts[0].source
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .corpus import Corpus


@dataclass(frozen=True)
class Prompt:
    id: str  # stable id: "<file>:<line>"
    text: str
    ids: tuple[int, ...]
    source: str


def sample_prompts(
    corpus: Corpus, tokenizer, n: int, prompt_tokens: int = 64, seed: int = 0, split: str = "test",
    min_continuation_chars: int = 400,
) -> list[Prompt]:
    """Draw ``n`` distinct prompts; files are chosen with probability proportional to size."""
    if n <= 0:
        raise ValueError(f"n_prompts must be >= 1, got {n}")
    if prompt_tokens <= 0:
        raise ValueError(f"prompt_tokens must be >= 1, got {prompt_tokens}")
    docs = [d for d in corpus.documents(split) if d.size > 2 * min_continuation_chars]
    if not docs:
        raise ValueError(f"split {split!r} has no file long enough for prompts")
    rng = random.Random(seed)
    weights = [d.size for d in docs]
    out: list[Prompt] = []
    seen: set[str] = set()
    for _ in range(50 * n):
        if len(out) == n:
            break
        doc = rng.choices(docs, weights=weights, k=1)[0]
        text = doc.read(corpus.root)
        starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
        starts = [s for s in starts if len(text) - s > min_continuation_chars and text[s : s + 1].strip()]
        if not starts:
            continue
        s = rng.choice(starts)
        ids = tokenizer.encode(text[s : s + 8 * prompt_tokens], add_special_tokens=False)[:prompt_tokens]
        line = text.count("\n", 0, s) + 1
        pid = f"{doc.path}:{line}"
        if pid in seen or len(ids) < prompt_tokens:
            continue
        seen.add(pid)
        out.append(Prompt(pid, tokenizer.decode(ids), tuple(ids), doc.path))
    if len(out) < n:
        raise ValueError(f"could only draw {len(out)} distinct prompts of {prompt_tokens} tokens from split {split!r}")
    return out
