"""Token streams for language-model training: each split encoded once, documents joined by EOS, cached as ``.npy``.

Example:
    >>> arr = encode_split(corpus, tokenizer, "train")       # np.ndarray[uint16], one stream
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from .corpus import Corpus


def encode_texts(texts: list[str], tokenizer, desc: str = "encode") -> np.ndarray:
    eos = tokenizer.eos_token_id
    chunks = []
    batch = 64
    for i in tqdm(range(0, len(texts), batch), desc=desc, leave=False, disable=len(texts) < 200):
        for ids in tokenizer(texts[i : i + batch], add_special_tokens=False)["input_ids"]:
            chunks.append(np.asarray(ids + [eos], dtype=np.uint16))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint16)


def encode_split(corpus: Corpus, tokenizer, split: str, max_files: int | None = None) -> np.ndarray:
    docs = corpus.documents(split)[: max_files or None]
    return encode_texts([d.read(corpus.root) for d in docs], tokenizer, desc=f"encode {split}")
