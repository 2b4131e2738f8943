"""The policy extension point: ``Policy`` decides, per step, to EXTEND the draft, VERIFY it, or TRUST part of it.

A policy sees numbers, never models: ``decide(state)`` gets a frozen ``StepState`` (the drafts so far with their
confidences q(d_j), entropies and top-1/top-2 margins, plus running acceptance statistics) and returns an ``Action``.
The decoder (``specpolicy.decoding``) and the trace replayer (``specpolicy.replay``) drive the same policy objects
through the same ``StepState``, which is what makes replay exact. This module imports nothing else of ours.

Example (with ``from specpolicy import generate, load_model``)::

    class Greedy3(Policy):
        name = "greedy3"
        def decide(self, state):
            return Action.extend() if state.depth < min(3, state.budget) else Action.verify()

    res = generate(load_model("tiny"), "def f(", policy=Greedy3())       # no registration needed
"""

from __future__ import annotations

import enum
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from operator import add as _add
from typing import Any, ClassVar

_new = object.__new__  # the step's hot path builds frozen records without __init__, filling their __dict__
_INC_LEN = 64


def _incrementer(n: int):
    """``t -> t`` with 1 added to each of its first n entries (``len(t) >= n``), written out entry by entry: the
    interpreter's specialised int additions, about twice as fast as a ``map`` over the tuple (``_INC[n]``)."""
    return eval(f"lambda t: ({''.join(f't[{j}] + 1, ' for j in range(n))}) + t[{n}:]")


_INC = (tuple, *map(_incrementer, range(1, _INC_LEN + 1)))  # [n]: +1 to the first n counts ([0]: the same tuple)


class ActionKind(enum.Enum):
    EXTEND = "extend"
    VERIFY = "verify"
    TRUST = "trust"


@dataclass(frozen=True)
class Action:
    """What the policy wants now. Build with ``Action.extend()``, ``Action.verify()``, ``Action.trust(mask)``.

    TRUST ends drafting like VERIFY does, but the drafts whose mask entry is True are committed without the target's
    veto (lossy; each is flagged ``trusted`` and its shadow verdict recorded). The mask covers d_1..d_m.
    """

    kind: ActionKind
    mask: tuple[bool, ...] = ()

    @staticmethod
    def extend() -> Action:
        return _EXTEND

    @staticmethod
    def verify() -> Action:
        return _VERIFY

    @staticmethod
    def trust(mask) -> Action:
        mask = tuple(bool(x) for x in mask)
        return Action(ActionKind.TRUST, mask) if any(mask) else _VERIFY


_EXTEND = Action(ActionKind.EXTEND)
_VERIFY = Action(ActionKind.VERIFY)


@dataclass(frozen=True)
class AcceptanceStats:
    """Running acceptance statistics of the current generation, per depth j (index j-1)."""

    attempted: tuple[int, ...] = ()  # drafts at depth j that reached the strict rule (trusted ones excluded)
    accepted: tuple[int, ...] = ()  # of those, accepted

    def rate(self, depth: int, prior: float = 0.5, prior_n: float = 1.0) -> float:
        """Smoothed acceptance rate at ``depth`` (1-based), conditional on reaching it."""
        a = self.accepted[depth - 1] if depth <= len(self.accepted) else 0
        n = self.attempted[depth - 1] if depth <= len(self.attempted) else 0
        return (a + prior * prior_n) / (n + prior_n)

    def updated(self, outcome: StepOutcome) -> AcceptanceStats:
        """Add one step: every walked draft counts as attempted at its depth, and as accepted iff its strict
        verdict was accept (for trusted/relaxed drafts that is the shadow verdict). Decoder and replay share this.

        Example:
            >>> AcceptanceStats((2,), (1,)).updated(StepOutcome(2, 1, (False, False), (True, False), 2))
            AcceptanceStats(attempted=(3, 1), accepted=(2, 0))
        """
        return self._plus(outcome.verdicts)

    def _plus(self, verdicts: tuple[bool, ...]) -> AcceptanceStats:
        """``updated`` from the step's verdicts alone (the step's hot path: no ``__init__``; attempted via ``_INC``)."""
        n = len(verdicts)
        if not n:
            return self  # nothing walked: the same (immutable) counts
        att, acc = self.attempted, self.accepted
        if n > len(att):
            pad = (0,) * (n - len(att))
            att, acc = att + pad, acc + pad
        new = _new(AcceptanceStats)
        fields = new.__dict__
        fields["attempted"] = _INC[n](att) if n <= _INC_LEN else (*(a + 1 for a in att[:n]), *att[n:])
        fields["accepted"] = (*map(_add, acc, map(bool, verdicts)), *acc[n:])
        return new

    def _walked(self, n: int, k: int) -> AcceptanceStats:
        """``_plus`` of a strict walk's verdicts, k accepts then n - k (0 or 1) rejects (the replay's strict steps)."""
        if not n:
            return self  # nothing walked: the same (immutable) counts
        att, acc = self.attempted, self.accepted
        if n > len(att) or n > _INC_LEN:
            return self._plus((True,) * k + (False,) * (n - k))
        new = _new(AcceptanceStats)
        fields = new.__dict__
        fields["attempted"], fields["accepted"] = _INC[n](att), _INC[k](acc)
        return new


@dataclass(frozen=True)
class StepState:
    """Everything a policy may look at while drafting one step.

    Per-draft tuples have one entry per drafted token d_1..d_m (m = ``depth``); all are plain Python numbers.
    ``confidence`` is q(d_j) by default, or a calibrated P(accept) when a calibrator wraps the policy.
    ``native_depths`` is how many depths the drafter has natively (MTP layers, Medusa heads); deeper drafts re-use
    its last layer or head. ``num_mtp_layers`` is its deprecated former name, accepted as a constructor keyword (and
    in its old positional slot, after ``budget``) and readable as an attribute, for one release.
    """

    drafts: tuple[int, ...] = ()
    confidence: tuple[float, ...] = ()
    entropy: tuple[float, ...] = ()  # entropy of q at depth j, in nats
    margin: tuple[float, ...] = ()  # q(top-1) - q(top-2) at depth j
    step: int = 0  # index of this step (target forward) in the generation
    position: int = 0  # new tokens committed so far
    budget: int = 1 << 30  # most drafts this step may still hold (max_new_tokens - position - 1)
    stats: AcceptanceStats = field(default_factory=AcceptanceStats)
    last_accepted: int = -1  # drafts committed by the previous step (-1 before the first)
    native_depths: int = 1  # depths the drafter has natively; deeper ones re-use its last layer/head

    @property
    def depth(self) -> int:
        return len(self.drafts)

    def extended(self, draft: int, confidence: float, entropy: float, margin: float) -> StepState:
        """This state with one more draft d_{m+1} (the step core's hot path: no ``__init__``, fields copied).

        Example:
            >>> StepState(budget=4).extended(17, 0.9, 0.3, 0.8).drafts
            (17,)
        """
        old = self.__dict__
        new = _new(StepState)
        fields = new.__dict__
        fields.update(old)
        fields["drafts"] = old["drafts"] + (draft,)
        fields["confidence"] = old["confidence"] + (confidence,)
        fields["entropy"] = old["entropy"] + (entropy,)
        fields["margin"] = old["margin"] + (margin,)
        return new

    def with_prefix(self, prefix: tuple[tuple, tuple, tuple, tuple]) -> StepState:
        """This state with its per-draft fields replaced by ``prefix`` = (drafts, confidence, entropy, margin) for
        d_1..d_j, equal to ``replace(self, drafts=..., confidence=..., entropy=..., margin=...)`` but built without
        ``__init__``; the replay grows a state this way from prefixes it builds once per trace (j calls of
        ``extended`` from a state without drafts give the same state).

        Example:
            >>> one = StepState(budget=4).extended(17, 0.9, 0.3, 0.8)
            >>> StepState(budget=4).with_prefix(((17,), (0.9,), (0.3,), (0.8,))) == one
            True
        """
        new = _new(StepState)
        fields = new.__dict__
        fields.update(self.__dict__)
        fields["drafts"], fields["confidence"], fields["entropy"], fields["margin"] = prefix
        return new

    @staticmethod
    def at_step(step: int, position: int, budget: int, stats: AcceptanceStats, last_accepted: int,
                native_depths: int) -> StepState:
        """The state at the start of a step (no drafts yet), equal to ``StepState(step=..., ...)`` but built
        without ``__init__`` (the replay's hot path).

        Example:
            >>> StepState.at_step(3, 5, 2, AcceptanceStats(), 1, 2) == StepState(step=3, position=5, budget=2,
            ...                                                                   last_accepted=1, native_depths=2)
            True
        """
        new = _new(StepState)
        fields = new.__dict__
        fields.update(_BLANK_STATE)  # (a dict filled by update reads faster than one filled key by key)
        fields["step"], fields["position"], fields["budget"] = step, position, budget
        fields["stats"], fields["last_accepted"], fields["native_depths"] = stats, last_accepted, native_depths
        return new

    @property
    def num_mtp_layers(self) -> int:
        """Deprecated: ``native_depths``."""
        warnings.warn("StepState.num_mtp_layers is deprecated; use native_depths", DeprecationWarning, stacklevel=2)
        return self.native_depths


_BLANK_STATE = dict(StepState().__dict__)  # every field at its default, in field order
_state_init = StepState.__init__
_OLD_SLOT = 7  # num_mtp_layers sat after budget; stats and last_accepted followed it


def _init_with_alias(self, *args, num_mtp_layers: int | None = None, **kwargs) -> None:
    if len(args) > _OLD_SLOT:  # positional construction in the old field order
        num_mtp_layers, args = args[_OLD_SLOT], args[:_OLD_SLOT] + args[_OLD_SLOT + 1 :]
    if num_mtp_layers is not None:
        warnings.warn("StepState(num_mtp_layers=...) is deprecated; use native_depths=", DeprecationWarning,
                      stacklevel=2)
        if "native_depths" in kwargs or len(args) > _OLD_SLOT + 2:
            raise TypeError("StepState: give native_depths or its deprecated alias num_mtp_layers, not both")
        kwargs["native_depths"] = num_mtp_layers
    _state_init(self, *args, **kwargs)


StepState.__init__ = _init_with_alias  # replace() passes fields by name, so it takes the fast path


@dataclass(frozen=True)
class StepOutcome:
    """What happened to the drafts of one step, reported back through ``Policy.observe``."""

    drafted: int  # m
    accepted: int  # drafts committed (verified, relaxed or trusted)
    trusted: tuple[bool, ...]  # per draft, committed without the target's veto
    verdicts: tuple[bool, ...]  # per walked draft, the strict rule's verdict (shadow verdict for trusted/relaxed)
    committed: int  # tokens committed this step: accepted + the target's token (0 if the budget ran out)
    draft_s: float = 0.0
    verify_s: float = 0.0

    @staticmethod
    def of(drafted: int, accepted: int, trusted: tuple[bool, ...], verdicts: tuple[bool, ...], committed: int,
           draft_s: float, verify_s: float) -> StepOutcome:
        """Equal to ``StepOutcome(...)`` with every field given, built without ``__init__`` (the replay's hot path).

        Example:
            >>> StepOutcome.of(1, 1, (False,), (True,), 2, 0.0, 0.0) == StepOutcome(1, 1, (False,), (True,), 2)
            True
        """
        new = _new(StepOutcome)
        fields = new.__dict__
        fields["drafted"], fields["accepted"], fields["trusted"], fields["verdicts"] = drafted, accepted, trusted, verdicts
        fields["committed"], fields["draft_s"], fields["verify_s"] = committed, draft_s, verify_s
        return new


@dataclass(frozen=True)
class AcceptanceRule:
    """A lossy acceptance rule that still consults the target (``relaxed`` provenance), applied by the decoder.

    kind = "typical": accept d if p(d) > min(eps, delta * exp(-H(p)))       (Medusa typical acceptance)
    kind = "topk":    accept d if d in top-k of p and log p(top1) - log p(d) <= delta   (TensorRT-LLM relaxed)
    """

    kind: str
    eps: float = 0.0
    delta: float = 0.0
    k: int = 1


class Policy(ABC):
    """One small ABC: implement ``decide``; the hooks default to doing nothing.

    ``name`` is the registry key. ``acceptance`` is None for the strict rule or an ``AcceptanceRule``.
    ``lossless`` says whether the policy can ever commit a token the strict rule would reject. ``requires_drafter``
    is None, or the one drafter whose numbers the policy is fitted to (a calibrated policy's calibrator).
    """

    name: ClassVar[str] = "custom"
    acceptance: AcceptanceRule | None = None
    requires_drafter: str | None = None  # a drafter's name: the decoder and the replay refuse any other
    # False: this class's own ``decide`` never reads ``state.stats`` (nor hands the state to anything that could), so
    # the replay may leave the running statistics out of the states it builds (``reads_stats``). Declare it in the
    # class body next to ``decide``: a subclass that overrides ``decide`` reads stats again unless it declares too.
    reads_stats: ClassVar[bool] = True

    @abstractmethod
    def decide(self, state: StepState) -> Action:
        """Return EXTEND (draft d_{m+1}), VERIFY, or TRUST(mask over d_1..d_m)."""

    def reset(self) -> None:  # noqa: B027 - optional hook
        """Called at the start of each generation."""

    def observe(self, outcome: StepOutcome) -> None:  # noqa: B027 - optional hook
        """Called after each step with what happened to its drafts."""

    def decide_chain(self, state: StepState, chain: tuple) -> tuple[int, Action] | None:
        """Optional, for speed where every draft is known before the draft phase starts (the replay: a trace holds
        them): ``chain`` = (drafts, confidence, entropy, margin) of d_1..d_n, the state's own m drafts first. Return
        ``(j, action)``: the depth j (m <= j <= n) at which asking ``decide`` depth by depth from ``state``, with
        d_1..d_i in the state at depth i, stops extending, and the action it then returns (past d_n the drafter has
        nothing, so the draft phase asks once more with ``budget = n``). None, the default: the caller asks ``decide``
        depth by depth. Used only where the class that defines the ``decide`` in use defines this too
        (``chain_hook``); tests/replay/test_replay_fast_paths.py checks it against ``decide`` for the built-ins."""
        return None

    @property
    def lossless(self) -> bool:
        return self.acceptance is None

    def params(self) -> dict[str, Any]:
        """The policy's parameters (for records and configs)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    @classmethod
    def search_space(cls, trial) -> dict[str, Any]:
        """Parameters to try in an Optuna ``trial`` (``trial.suggest_*``); empty means nothing to tune."""
        return {}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({inner})"


def reads_stats(policy: Policy) -> bool:
    """Whether ``policy.decide`` may read ``state.stats``: True unless the class that defines the ``decide`` in use
    declares ``reads_stats = False`` in its own body (so a subclass with its own ``decide`` never inherits the promise).

    Example:
        >>> class Fixed1(Policy):
        ...     reads_stats = False
        ...     def decide(self, state): return Action.verify()
        >>> class Peeks(Fixed1):
        ...     def decide(self, state): return Action.extend() if state.stats.rate(1) > 0.9 else Action.verify()
        >>> reads_stats(Fixed1()), reads_stats(Peeks())
        (False, True)
    """
    for klass in type(policy).__mro__:
        if "decide" in vars(klass):
            return vars(klass).get("reads_stats", True) is not False
    return True


def chain_hook(policy: Policy):
    """``policy.decide_chain`` where the class that defines the ``decide`` in use defines it too, else None (a
    subclass with its own ``decide`` never inherits a chain that no longer matches it); for a wrapper of another
    policy (a ``base_policy`` attribute: ``calibrated``), only where that policy has a chain too.

    Example:
        >>> class Verify(Policy):
        ...     def decide(self, state): return Action.verify()
        >>> chain_hook(Verify()) is None
        True
    """
    for klass in type(policy).__mro__:
        if "decide" in vars(klass):
            if "decide_chain" not in vars(klass):
                return None
            inner = getattr(policy, "base_policy", None)
            return policy.decide_chain if inner is None or chain_hook(inner) is not None else None
    return None
