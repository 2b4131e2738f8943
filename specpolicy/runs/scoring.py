"""Target NLL of a generation: one teacher-forced target forward over prompt + output.

The NLL is taken under the target's raw distribution (temperature 1, no top-k/top-p), whatever the decode settings,
so greedy and sampled outputs of different policies are scored on the same scale.

Example:
    >>> nll_sum, n = target_nll(model, res.prompt_ids, res.token_ids)
    >>> nll_sum / n                                    # mean NLL per new token, nats
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["target_nll"]


@torch.inference_mode()
def target_nll(model, prompt_ids: Sequence[int], token_ids: Sequence[int]) -> tuple[float, int]:
    """(sum of -log p(t_i | prefix) over the new tokens, number of new tokens), in nats.

    Example:
        >>> target_nll(model, [1, 2, 3], [4, 5])
        (6.21, 2)
    """
    if not token_ids:
        return 0.0, 0
    ids = torch.tensor([list(prompt_ids) + list(token_ids)], device=model.device)  # [1, P + n]
    P, n = len(prompt_ids), len(token_ids)
    logits = model.target(input_ids=ids[:, :-1]).logits[0, P - 1 :].float()  # [n, V]: row i predicts token P + i
    nll = torch.nn.functional.cross_entropy(logits, ids[0, P:], reduction="sum")
    return float(nll), n
