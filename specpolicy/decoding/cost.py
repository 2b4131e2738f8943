"""The device cost model of one decode step, and the one place it is measured.

A step with m drafts costs ``t_target(m+1)`` (one target forward over the block [t_n, d_1..d_m]) plus ``m`` drafter
steps. ``measure_cost`` times both the way the decoder runs them (medians of interleaved repetitions, CUDA
synchronised); replay, tuning and the benchmark all read the same ``CostModel``.

Example:
    >>> cost = measure_cost(load_model("tiny"), ctx=prompt_ids, k=8, reps=30)
    >>> cost.c(4), cost.t_mtp / cost.t_target[0]
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

__all__ = ["CostModel", "measure_cost"]


@dataclass(frozen=True)
class CostModel:
    """Device cost of one step: ``t_target[m-1]`` = seconds of a target forward over m tokens (m = 1..K+1),
    ``t_mtp`` = seconds of one drafter step. ``c(m) = t_target[m-1] / t_target[0]``.

    Example:
        >>> cm = CostModel(t_target=(0.010, 0.011, 0.012), t_mtp=0.002)
        >>> round(cm.c(3), 2), round(cm.step_s(2), 4)       # step with 2 drafts: forward over 3 tokens + 2 drafts
        (1.2, 0.016)
    """

    t_target: tuple[float, ...]
    t_mtp: float

    def c(self, m: int) -> float:
        return self.forward_s(m) / self.t_target[0]

    def forward_s(self, m: int) -> float:
        """Seconds of a target forward over m tokens (linear extrapolation past the measured range)."""
        t = self.t_target
        if m <= len(t):
            return t[m - 1]
        slope = (t[-1] - t[-2]) if len(t) > 1 else t[-1]
        return t[-1] + (m - len(t)) * max(slope, 0.0)

    def step_s(self, drafted: int) -> float:
        """Modelled seconds of one step with ``drafted`` drafts: c(m+1) * t_target(1) + m * t_mtp."""
        return self.forward_s(drafted + 1) + drafted * self.t_mtp

    def to_dict(self) -> dict:
        return {"t_target": list(self.t_target), "t_mtp": self.t_mtp,
                "c": [self.c(m) for m in range(1, len(self.t_target) + 1)], "mtp_rel": self.t_mtp / self.t_target[0]}



def measure_cost(model, ctx: list[int], k: int, reps: int, drafter=None) -> CostModel:
    """The cost model of ``model`` after a context ``ctx`` (token ids), timed as the decoder runs (medians of
    ``reps`` after one warm-up repetition; CUDA synchronised around every timed call):

    t_target[m-1]: target forward + head over m new tokens after a KV cache of ``ctx`` (the cache is cropped back
                   after each call), m = 1..K+1, interleaved within each repetition so load drift hits every m alike;
    t_mtp:         one drafting step at depth 1 of ``drafter`` (default: the model's own, ``drafter_for``) on one
                   new position, its state caught up over ``ctx`` first, as the decoder drafts.
    """
    import torch
    from transformers import DynamicCache

    from .drafters import drafter_for

    def timed(fn) -> float:
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        t0 = time.perf_counter()
        fn()
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        return time.perf_counter() - t0

    body, head = model.target.get_decoder(), model.target.get_output_embeddings()
    P = len(ctx)
    ids = torch.tensor([list(ctx) + [0] * (k + 2)], device=model.device)  # [1, P + K + 2]
    with torch.inference_mode():
        cache = DynamicCache(config=model.target.config)
        h = body(input_ids=ids[:, :P], cache=cache).last_hidden_state  # [1, P, H]
        vocab = model.target.config.get_text_config().vocab_size
        times: dict[int, list[float]] = {m: [] for m in range(1, k + 2)}
        for rep in range(reps + 1):
            for m in range(1, k + 2):
                x = torch.randint(0, vocab, (1, m), device=model.device)
                t = timed(lambda x=x: head(body(input_ids=x, cache=cache).last_hidden_state))
                cache.crop(-m)
                if rep:  # repetition 0 warms up
                    times[m].append(t)
        t_target = [statistics.median(times[m]) for m in range(1, k + 2)]
        d = drafter_for(model) if drafter is None else drafter
        n = P - 1  # t_n = ctx[-1] is the last committed token; the prompt hidden states cover 0..n-1
        d.begin(ids, n, h[:, :n])
        d.draft(1, ids, n)  # catch up over the context once
        ts = []
        for _ in range(reps + 1):
            d.crop(n)  # forget the last position: the next draft processes exactly one index
            ts.append(timed(lambda: d.draft(1, ids, n)))
    return CostModel(tuple(t_target), statistics.median(ts[1:]))
