"""The replay's memoised lossy walks and its per-depth tallies (``simulate``): what a step with trusted drafts or a
relaxed rule commits, a function of the trace's row and of what decides the walk besides it."""

from __future__ import annotations

from specpolicy.decoding.step import RELAXED, TRUSTED, VERIFIED, walk


def _lossy_block(row: tuple, m: int, mask: tuple, judge, relaxed: bool, eos: frozenset, first: int) -> tuple:
    """The walk of the row's d_1..d_m with trusted drafts (``mask``) or a relaxed rule, as ``(eos, accepted, verdicts,
    committed tokens, trusted, relaxed, wrong)`` (the last three: committed lossy drafts, and those of them the strict
    rule rejects), memoised in the row under what decides the walk besides the row: the mask, or (no trusted draft)
    the relaxed rule's answers. A walk without trusted drafts is the strict walk up to its first rejected draft
    (``first``, 0-based), where the rule is asked; each accept commits the draft and the walk goes on along the chain's
    verdicts to the next rejected draft, where it is asked again: those answers, and m, fix the walk whatever the
    rule's parameters, so the walks of a study's trials share their memos. A walk with both (no built-in policy has
    them) is not memoised."""
    memo = row[8]
    if not any(mask):  # the relaxed rule's answers from the first rejected draft on (``walk``: ``_walk_lossy``)
        nxt = memo.get(None)
        if nxt is None:  # [j]: the first j' > j whose chain verdict rejects (or K)
            ok, nxt, j = row[2], [], len(row[2])
            for i in range(len(ok) - 1, -1, -1):
                nxt.append(j)
                j = i if not ok[i][0] else j
            nxt = memo[None] = tuple(reversed(nxt))
        answers, j, ask = [], first, judge.relaxed
        while j < m:
            a = ask(j)
            answers.append(a)
            if not a:
                break
            j = nxt[j]
        key = (m, *answers)
    elif not relaxed:
        key = (-m, *mask)
    else:
        key = None
    block = memo.get(key) if key is not None else None
    if block is None:
        b = walk(row[7][0][:m], mask, judge, relaxed, eos)
        kinds = b.provenance[: b.accepted]
        wrong = sum(not ok for kind, ok in zip(kinds, b.verdicts) if kind != VERIFIED)
        block = (b.eos, b.accepted, b.verdicts, len(b.committed), kinds.count(TRUSTED), kinds.count(RELAXED), wrong)
        if key is not None:
            memo[key] = block
    return block


def _depth_counts(walked: list[int], ok: list[int], lossy: dict) -> tuple[tuple, tuple]:
    """``AcceptanceStats``' (attempted, accepted) of a prompt from ``walked[n]`` / ``ok[n]``: strict steps with n
    verdicts / n leading accepts, and ``lossy``: {verdicts: steps} of the other steps."""
    width = max([n for n, c in enumerate(walked) if c] + [len(v) for v in lossy] + [0])
    att, acc = [sum(walked[j + 1 :]) for j in range(width)], [sum(ok[j + 1 :]) for j in range(width)]
    for verdicts, steps in lossy.items():
        for j, v in enumerate(verdicts):
            att[j] += steps
            acc[j] += steps * v
    return tuple(att), tuple(acc)
