"""The decode loop (one), the step core it shares with the replay, acceptance rules, and the drafters.

    decoder      ``generate``: the loop that runs the target and a drafter
    step         the model-free step core: draft phase, trust mask, walk, EOS cut (``replay`` calls it too)
    acceptance   strict and relaxed acceptance rules (tensor and scalar forms), ``warp``
    drafters     the ``Drafter`` protocol and its implementations
    harness      prompts x runners, warmed up and interleaved (runner, bench, replay report)
    cost         the device cost model and its one measurement
    probe        a hook that drafts past the policy's drafts (trace recording)
    precision    what lossless means in finite precision: near-ties, mismatches, float32 self-consistency
    result       ``GenerationResult``, ``StepRecord``, ``GenerationStats``
"""

from .decoder import DecodeError, generate
from .drafters import Drafter, MTPDrafter, NgramDrafter, drafter_for
from .probe import DraftProbe
from .result import PROVENANCE, GenerationResult, GenerationStats, StepRecord

__all__ = ["DecodeError", "DraftProbe", "Drafter", "MTPDrafter", "NgramDrafter", "drafter_for", "generate", "PROVENANCE", "GenerationResult",
           "GenerationStats", "StepRecord"]
