"""The step core, model-free and written once: the draft phase, the trust mask, and the walk over d_1..d_m with its
EOS cut. The decoder (``decoding.decoder``, tensors) and the replay (``replay.simulate``, trace lookups) both call it;
what differs between them is only where a draft and a verdict come from.

    state, action = draft_phase(policy, state, next_draft)     # EXTEND -> next_draft(depth) drafts d_depth
    mask          = trust_mask(action, state.depth)            # TRUST(mask) padded to d_1..d_m; else all False
    block         = walk(state.drafts, mask, judge, relaxed, eos)

The walk, for j = 1..m (``judge`` answers from the target's block forward, or from a trace):

    verdict_j = strict rule on d_j          (greedy: d_j == argmax p_j; sampling: u_j < min(1, p_j(d_j)/q_j(d_j)))
    trusted   -> commit d_j ("trusted", its verdict kept as the shadow verdict)
    accepted  -> commit d_j ("verified")
    relaxed rule accepts (if the policy names one) -> commit d_j ("relaxed")
    otherwise -> commit the target's correction at j ("target") and stop
    all m committed -> commit the target's bonus token at m+1 ("target")

then nothing after an EOS is committed (the block is cut after it). ``clean`` -- every draft committed so far passed
the strict rule -- is handed to the judge: while it holds, the block is on the target's own path, which a replay
needs to know to look the target's tokens up in a trace.

Example:
    >>> from specpolicy.policies import StepState, get_policy
    >>> feats = {1: (11, 0.9, 0.2, 0.8), 2: (12, 0.4, 1.1, 0.1)}         # depth -> (d, q(d), H(q), margin)
    >>> state, action = draft_phase(get_policy("fixed", k=2), StepState(budget=5), feats.get)
    >>> state.drafts, action.kind.value
    ((11, 12), 'verify')
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from ..policies import Action, ActionKind, Policy, StepState

__all__ = ["Block", "Judge", "draft_phase", "trust_mask", "walk", "TARGET", "VERIFIED", "RELAXED", "TRUSTED"]

TARGET, VERIFIED, RELAXED, TRUSTED = "target", "verified", "relaxed", "trusted"  # provenance of a committed token
_EXTEND, _TRUST = ActionKind.EXTEND, ActionKind.TRUST
_new = object.__new__  # the hot path builds frozen records without __init__
_VERIFIED = (VERIFIED,) * 4096  # provenance of a strict walk's accepted drafts (a block never holds 4096 drafts)

# next_draft(depth) -> (d_depth, q(d_depth), H(q) in nats, q(top-1) - q(top-2)), or None: no draft at this depth
NextDraft = Callable[[int], "tuple[int, float, float, float] | None"]


def _extended(state: StepState, features: tuple[int, float, float, float]) -> StepState:
    return state.extended(*features)


def draft_phase(policy: Policy, state: StepState, next_draft: NextDraft,
                extend: Callable[[StepState, object], StepState] = _extended) -> tuple[StepState, Action]:
    """Ask ``policy`` until it stops extending (or the budget is spent); ``next_draft`` drafts each new depth.

    When the drafter has no draft to offer (``next_draft`` returns None: a model-free drafter found no match), the
    budget shrinks to the current depth and the policy is asked once more, so it still chooses VERIFY or TRUST for
    the drafts it has. Returns the final state (drafts d_1..d_m with their features) and the action that ended it.
    ``extend(state, answer)`` grows the state by next_draft's answer: by default the features of d_{m+1}
    (``StepState.extended``); the replay answers the whole prefix d_1..d_{m+1}, built once per trace, and grows
    with ``StepState.with_prefix`` (the same states, without the per-depth tuple concatenations).
    """
    decide, m, budget = policy.decide, len(state.drafts), state.budget
    while True:
        action = decide(state)
        if action.kind is not _EXTEND or m >= budget:
            return state, action
        f = next_draft(m + 1)
        if f is None:
            state = replace(state, budget=m)
            budget = m
        else:
            state = extend(state, f)
            m += 1


def trust_mask(action: Action, m: int) -> tuple[bool, ...]:
    """The action's trust mask over d_1..d_m (padded with False); all False unless the action is TRUST.

    Example:
        >>> trust_mask(Action.trust([True]), 3), trust_mask(Action.verify(), 2)
        ((True, False, False), (False, False))
    """
    if action.kind is not _TRUST:
        return (False,) * m
    if len(action.mask) > m:
        raise ValueError(f"trust mask has {len(action.mask)} entries but only {m} drafts exist")
    return action.mask + (False,) * (m - len(action.mask))


class Judge(Protocol):
    """Where the verdicts of one block come from (j is 0-based: the block position of d_{j+1})."""

    def strict(self, j: int, clean: bool) -> tuple[bool, float]:
        """The strict rule on d_{j+1}: (accepted, acceptance probability: greedy 1.0/0.0, sampling min(1, p/q))."""

    def relaxed(self, j: int) -> bool:
        """The policy's relaxed rule on d_{j+1} (asked only when it has one, for drafts the strict rule rejected)."""

    def target(self, j: int, clean: bool, rejected: bool) -> int:
        """The target's token at block position j: the correction after d_{j+1} was rejected, or the bonus."""


@dataclass(frozen=True)
class Block:
    """What one step commits. ``verdicts`` covers every walked draft (also those an EOS cut off)."""

    committed: tuple[int, ...]  # tokens committed by the step, in order
    provenance: tuple[str, ...]  # per committed token: target | verified | relaxed | trusted
    verdicts: tuple[bool, ...]  # strict verdict per walked draft (the shadow verdict of trusted/relaxed ones)
    accept_prob: tuple[float, ...]  # per walked draft: greedy 1.0/0.0, sampling min(1, p(d)/q(d))
    accepted: int  # drafts committed (committed tokens that are not the target's)
    walked: int  # block positions the walk read: drafts walked + the correction/bonus position (before the cut)
    eos: bool  # the block ends with an EOS token (the generation is finished)


def _walk_lossy(drafts, mask, judge, relaxed):
    """The walk of a block with trusted drafts or a relaxed rule: (committed, provenance, verdicts, probabilities)."""
    strict = judge.strict
    committed, prov, verdicts, probs = [], [], [], []
    clean, j = True, 0
    for d in drafts:
        ok, prob = strict(j, clean)
        verdicts.append(ok)
        probs.append(prob)
        if mask[j]:
            prov.append(TRUSTED)
        elif ok:
            prov.append(VERIFIED)
        elif relaxed and judge.relaxed(j):
            prov.append(RELAXED)
        else:
            committed.append(judge.target(j, clean, True))
            prov.append(TARGET)
            break
        committed.append(d)
        if not ok:
            clean = False
        j += 1
    else:
        committed.append(judge.target(j, clean, False))
        prov.append(TARGET)
    return committed, prov, verdicts, probs


def walk(drafts: Sequence[int], mask: Sequence[bool], judge: Judge, relaxed: bool = False,
         eos: Collection[int] = ()) -> Block:
    """Walk d_1..d_m in order (module docstring) and cut the committed tokens after the first EOS.

    ``relaxed``: the policy names a relaxed rule, so ``judge.relaxed`` is asked for drafts the strict rule rejects.
    """
    strict, m = judge.strict, len(drafts)
    if not relaxed and not any(mask):  # the strict walk: commit up to the first rejection (same rules, fewer ops)
        verdicts, probs, j = [], [], 0
        while j < m:
            ok, prob = strict(j, True)  # the block stays clean: every committed draft passed the strict rule
            verdicts.append(ok)
            probs.append(prob)
            if not ok:
                break
            j += 1
        committed = [*drafts[:j], judge.target(j, True, j < m)]
        prov = [*_VERIFIED[:j], TARGET]
    else:
        committed, prov, verdicts, probs = _walk_lossy(drafts, mask, judge, relaxed)
    walked, cut = len(committed), False
    if eos:
        for i, t in enumerate(committed):
            if t in eos:  # nothing after an EOS is committed
                committed, prov, cut = committed[: i + 1], prov[: i + 1], True
                break
    accepted = len(prov) - (prov[-1] == TARGET)  # only the last token can be the target's
    block = _new(Block)  # = Block(...), without the frozen __init__
    fields = block.__dict__
    fields["committed"], fields["provenance"] = tuple(committed), tuple(prov)
    fields["verdicts"], fields["accept_prob"] = tuple(verdicts), tuple(probs)
    fields["accepted"], fields["walked"], fields["eos"] = accepted, walked, cut
    return block
