"""Quality of an MTP model as a drafter: next-token accuracy, per-depth draft agreement, confidence AUROC, looping.

Draft agreement is measured teacher-forced on the target's own greedy continuations: the depth-j draft at index i
(reading the true tokens t_{i+1..i+j}) is compared with the target's greedy token t_{i+j+1}. Conditioned on the
shallower drafts being right, this is exactly what the speculative decoder sees along an accepted chain.

Example:
    >>> acc = next_token_accuracy(model, test_stream, n_windows=64)
    >>> agree = draft_agreement(model, greedy_sequences, prompt_lens, depths=4)
    >>> loop_share([gen.tolist() for gen in generations])
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from .mtp import mtp_chain_logits


@torch.no_grad()
def next_token_accuracy(model, stream: np.ndarray, n_windows: int = 64, seq_len: int = 512, seed: int = 0) -> dict:
    """Top-1 accuracy and NLL of the target on random windows of a token stream (real text)."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(stream) - seq_len - 1, size=n_windows)
    hits, nll, n = 0, 0.0, 0
    for s in starts:
        ids = torch.as_tensor(stream[s : s + seq_len + 1].astype(np.int64), device=model.device)[None]
        logits = model.target(ids[:, :-1]).logits.float()  # [1, T, V]
        labels = ids[:, 1:]
        hits += (logits.argmax(-1) == labels).sum().item()
        nll += torch.nn.functional.cross_entropy(logits[0], labels[0], reduction="sum").item()
        n += labels.numel()
    return {"top1": hits / n, "nll": nll / n, "tokens": n}


@torch.no_grad()
def draft_agreement(model, sequences: list[torch.Tensor], prompt_lens: list[int], depths: int) -> dict:
    """Per depth j: agreement of the depth-j draft with the target's greedy token on greedy continuations.

    sequences[b]: [T_b] prompt + greedy continuation. Index i counts when the whole chain d_1..d_D drafted there
    predicts continuation tokens (plen - 1 <= i and i + D + 1 <= T - 1), so all depths share the same indices.
    Returns per depth: agreement rate, conditional acceptance P(d_j right | d_1..d_{j-1} right), chain acceptance
    P(d_1..d_j right), AUROC of q(d_j) for "d_j right", mean confidence and the count.
    """
    right = {j: [] for j in range(1, depths + 1)}  # j -> list of bool arrays over shared indices
    conf = {j: [] for j in range(1, depths + 1)}
    for seq, plen in zip(sequences, prompt_lens):
        ids = seq.to(model.device)[None]  # [1, T]
        T = ids.shape[1]
        lo, hi = plen - 1, T - depths - 1  # shared indices i in [lo, hi)
        if hi <= lo:
            continue
        h0 = model.target.model(input_ids=ids).last_hidden_state  # [1, T, H]
        for j, logits in enumerate(mtp_chain_logits(model.drafter, h0, ids, depths), start=1):
            q = torch.softmax(logits[0, lo:hi].float(), -1)  # [n, V]; row i predicts t_{i+j+1}
            conf[j].append(q.max(-1).values.cpu().numpy())
            right[j].append((q.argmax(-1) == ids[0, lo + j + 1 : hi + j + 1]).cpu().numpy())
    out = {}
    chain = None
    for j in range(1, depths + 1):
        r, c = np.concatenate(right[j]), np.concatenate(conf[j])
        reached = np.ones_like(r) if chain is None else chain
        chain = reached & r
        out[j] = {
            "agreement": float(r.mean()),
            "conditional_acceptance": float(r[reached].mean()) if reached.any() else float("nan"),
            "chain_acceptance": float(chain.mean()),
            "auroc": float(roc_auc_score(r, c)) if 0 < r.sum() < len(r) else float("nan"),
            "mean_confidence": float(c.mean()),
            "n": int(len(r)),
        }
    return out


def has_loop(tokens: list[int], n: int = 8, repeats: int = 3) -> bool:
    """True if some n-gram occurs ``repeats`` or more times in ``tokens``."""
    grams = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return bool(grams) and max(grams.values()) >= repeats


def loop_share(generations: list[list[int]], n: int = 8, repeats: int = 3) -> float:
    """Share of generations that fall into a loop (an n-gram repeated ``repeats`` or more times)."""
    return float(np.mean([has_loop(g, n, repeats) for g in generations])) if generations else float("nan")
