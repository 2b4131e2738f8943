"""``DraftProbe``: a ``generate(probe=...)`` hook that drafts past the policy's drafts, never verified.

After each draft phase the decoder calls ``probe(state, next_draft)``; this probe drafts depths m+1..``depth`` from
the same committed frontier (the drafter's caches are cropped afterwards as for any draft) and keeps, per step,
``(step, position, m, [(d_j, q(d_j), H(q_j), margin_j) or None for j = m+1..depth])``. Trace recording
(``replay.record.ChainProbe``) and the drafter-cache tests read drafters' chains this way; with ``probe=None`` the
decoder never calls anything.

Example:
    >>> probe = DraftProbe(depth=4)
    >>> res = generate(model, ids, "ar", max_new_tokens=32, probe=probe)
    >>> probe.steps[0][3][0]                                  # d_1 of the first step, with its features
    (17, 0.93, 0.31, 0.88)
"""

from __future__ import annotations

__all__ = ["DraftProbe"]


class DraftProbe:
    """Drafts every step's chain on to ``depth`` (see the module docstring)."""

    def __init__(self, depth: int):
        self.depth = depth
        self.steps: list[tuple[int, int, int, list]] = []

    def __call__(self, state, next_draft) -> None:
        m = state.depth
        self.steps.append((state.step, state.position, m, [next_draft(j) for j in range(m + 1, self.depth + 1)]))
