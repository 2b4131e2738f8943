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


def summarise(
    token_ids: list[int], provenance: list[str], steps: list[StepRecord], prefill_s: float, wall_s: float
) -> GenerationStats:
    counts = Counter(provenance)
    shadow_rejects = sum(
        1 for s in steps for j, prov in enumerate(s.provenance[: s.accepted]) if prov in ("relaxed", "trusted") and not s.verdicts[j]
    )
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
    )
