"""What a generation returns: committed tokens with provenance, one record per step, and summary stats.

Provenance of a committed token: ``target`` (the bonus/correction token, drawn from p), ``verified`` (draft passed the
strict rule), ``relaxed`` (passed only a relaxed rule; lossy), ``trusted`` (committed without the target's veto; lossy).
A generation is lossless iff it committed no ``relaxed`` or ``trusted`` token.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

PROVENANCE = ("target", "verified", "relaxed", "trusted")


@dataclass(frozen=True)
class StepRecord:
    """One target forward. Per-draft tuples cover d_1..d_m; ``verdicts`` covers the walked drafts."""

    step: int
    position: int  # new tokens committed before this step
    drafts: tuple[int, ...]
    confidence: tuple[float, ...]
    entropy: tuple[float, ...]
    margin: tuple[float, ...]
    action: str  # "verify" | "trust"
    trusted: tuple[bool, ...]
    verdicts: tuple[bool, ...]  # strict verdict per walked draft (shadow verdict for trusted/relaxed ones)
    accept_prob: tuple[float, ...]  # sampling: min(1, p(d)/q(d)) per walked draft; greedy: 1.0/0.0
    accepted: int  # drafts committed
    committed: tuple[int, ...]  # tokens committed by this step
    provenance: tuple[str, ...]
    target_tokens: tuple[int, ...]  # the target's greedy token at each walked position (for traces/calibration)
    draft_s: float
    verify_s: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GenerationStats:
    new_tokens: int
    target_forwards: int  # prefill included: plain AR decoding has tpf == 1
    tpf: float  # committed tokens per target forward
    steps: int
    drafted: int
    accepted: int  # drafts committed (verified + relaxed + trusted)
    mean_draft_len: float
    lossy_tokens: int  # relaxed + trusted
    trusted_tokens: int
    relaxed_tokens: int
    shadow_rejects: int  # lossy tokens the strict rule would have rejected
    shadow_accepts: int  # lossy tokens the strict rule would have accepted; + shadow_rejects == lossy_tokens
    prefill_s: float
    draft_s: float
    verify_s: float
    wall_s: float
    tokens_per_s: float
    # the shadow verdicts split by provenance, and where the first one fell (defaults keep old constructors valid)
    trusted_rejects: int = 0  # trusted tokens the strict rule would have rejected
    relaxed_rejects: int = 0  # relaxed tokens (all of them: a relaxed rule is asked only after a strict rejection)
    first_error: int = 0  # index of the first committed token whose shadow verdict is reject; new_tokens if none
    lossy_tv_bound: float = 0.0  # sum over lossy tokens of P(the strict rule rejects it): trusted 1 - accept_prob,
    # relaxed 1 (the rejection was drawn). Per new token, an upper bound on the mean per-token total-variation
    # distance between the lossy rule's next-token distribution and the target's (coupling with the strict rule)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GenerationResult:
    prompt_ids: tuple[int, ...]
    token_ids: tuple[int, ...]  # new tokens only
    text: str
    provenance: tuple[str, ...]
    steps: tuple[StepRecord, ...]
    stats: GenerationStats
    finished_by: str  # "eos" | "length"

    @property
    def lossless(self) -> bool:
        return self.stats.lossy_tokens == 0


def _shadow(steps: list[StepRecord], n_new: int) -> tuple[dict[str, int], int, float]:
    """({"trusted": rejects, "relaxed": rejects}, index of the first rejected lossy token or ``n_new``, TV bound sum).

    A step's committed tokens take positions ``position, position + 1, ...``; the first ``accepted`` of them are its
    drafts d_1.., whose strict verdicts (the shadow verdicts of lossy ones) are ``verdicts[j]``.
    """
    rejects, first, tv = {"trusted": 0, "relaxed": 0}, n_new, 0.0
    for s in steps:
        for j, prov in enumerate(s.provenance[: s.accepted]):
            if prov not in rejects:
                continue
            tv += 1.0 if prov == "relaxed" else 1.0 - float(s.accept_prob[j])
            if not s.verdicts[j]:
                rejects[prov] += 1
                first = min(first, s.position + j)
    return rejects, first, tv


def summarise(
    token_ids: list[int], provenance: list[str], steps: list[StepRecord], prefill_s: float, wall_s: float
) -> GenerationStats:
    """The ``GenerationStats`` of one generation from its committed tokens, their provenance and its step records.

    Example:
        >>> st = summarise([1, 2], ["target", "target"], [], prefill_s=0.0, wall_s=1.0)
        >>> st.tpf, st.trusted_rejects, st.first_error                   # no step: AR's prefill token plus one
        (2.0, 0, 2)
    """
    counts = Counter(provenance)
    rejects, first_error, tv = _shadow(steps, len(token_ids))
    shadow_rejects = rejects["trusted"] + rejects["relaxed"]
    lossy = counts["relaxed"] + counts["trusted"]
    forwards = 1 + len(steps)
    drafted = sum(len(s.drafts) for s in steps)
    return GenerationStats(
        new_tokens=len(token_ids),
        target_forwards=forwards,
        tpf=len(token_ids) / forwards,
        steps=len(steps),
        drafted=drafted,
        accepted=sum(s.accepted for s in steps),
        mean_draft_len=drafted / len(steps) if steps else 0.0,
        lossy_tokens=lossy,
        trusted_tokens=counts["trusted"],
        relaxed_tokens=counts["relaxed"],
        shadow_rejects=shadow_rejects,
        shadow_accepts=lossy - shadow_rejects,
        prefill_s=prefill_s,
        draft_s=sum(s.draft_s for s in steps),
        verify_s=sum(s.verify_s for s in steps),
        wall_s=wall_s,
        tokens_per_s=len(token_ids) / wall_s if wall_s > 0 else float("nan"),
        trusted_rejects=rejects["trusted"],
        relaxed_rejects=rejects["relaxed"],
        first_error=min(first_error, len(token_ids)),
        lossy_tv_bound=tv,
    )
