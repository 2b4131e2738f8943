"""The prompts x runners harness that the runner, the benchmark and the replay report share: warm-up, then every
(prompt, runner) pair in an interleaved order, timed.

Prompts are taken in order; for prompt i in repetition r the runners start at index (r + i) mod R (a rotation), so
no runner always runs first and machine-load drift hits them alike. Before the first pair, each runner decodes the
first prompt once with a few tokens (not yielded): first calls pay for lazy initialisation, which would otherwise
bias whichever runner comes first. A runner is any ``runner(ids, index, max_new_tokens)`` (a policy through
``generate``, transformers' ``generate``, ...); ``skip(index, label)`` leaves out pairs already done (resuming).

Example:
    >>> runners = {name: policy_runner(model, name) for name in ("ar", "fixed", "threshold")}
    >>> for cell in interleaved(prompts, runners, max_new_tokens=96):
    ...     print(cell.index, cell.label, cell.seconds, cell.result.stats.tpf)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Cell", "interleaved", "policy_runner", "rotation"]

Runner = Callable[[list[int], int, int], Any]  # (prompt token ids, prompt index, max_new_tokens) -> result


@dataclass(frozen=True)
class Cell:
    """One decoded (prompt, runner) pair."""

    repeat: int
    index: int  # prompt index
    prompt: Any
    label: str
    result: Any
    seconds: float  # wall clock of the runner call


def rotation(labels: Sequence[str], shift: int) -> list[str]:
    """``labels`` rotated left by ``shift`` (mod their number).

    Example:
        >>> rotation(["ar", "fixed", "threshold"], 1)
        ['fixed', 'threshold', 'ar']
    """
    s = shift % len(labels) if labels else 0
    return list(labels[s:]) + list(labels[:s])


def _ids(prompt) -> list[int]:
    return list(getattr(prompt, "ids", prompt))


def interleaved(prompts: Sequence, runners: Mapping[str, Runner], max_new_tokens: int, repeats: int = 1,
                warmup_tokens: int = 8, skip: Callable[[int, str], bool] | None = None, progress: bool = False,
                desc: str = "decode") -> Iterator[Cell]:
    """Yield a ``Cell`` for every (repetition, prompt, runner) not skipped, in the interleaved order above.

    ``prompts`` are token-id lists or objects with ``ids``; ``warmup_tokens=0`` skips the warm-up.
    """
    labels = list(runners)
    todo = [(r, i, p) for r in range(repeats) for i, p in enumerate(prompts)
            if skip is None or any(not skip(i, label) for label in labels)]
    if todo and warmup_tokens:
        first = _ids(todo[0][2])
        for label in labels:
            runners[label](first, todo[0][1], min(warmup_tokens, max_new_tokens))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=desc, unit="prompt", dynamic_ncols=True)
    for r, i, p in todo:
        for label in rotation(labels, r + i):
            if skip is not None and skip(i, label):
                continue
            t0 = time.perf_counter()
            result = runners[label](_ids(p), i, max_new_tokens)
            yield Cell(r, i, p, label, result, time.perf_counter() - t0)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()


def policy_runner(model, policy: Callable[[], Any] | str, seed: int | None = None, **generate_kw) -> Runner:
    """A runner that decodes with ``generate`` and a fresh policy per call (``policy`` is a factory or a name);
    sampling seeds are ``seed + index`` (the same for every runner on one prompt), None for greedy."""
    from .decoder import generate

    def run(ids: list[int], index: int, max_new_tokens: int):
        pol = policy() if callable(policy) else policy
        return generate(model, ids, pol, max_new_tokens=max_new_tokens,
                        seed=None if seed is None else seed + index, **generate_kw)

    return run
