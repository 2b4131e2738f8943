"""The decode loop (one), acceptance rules (pure tensor functions) and drafter cache handling."""

from .decoder import DecodeError, generate
from .result import PROVENANCE, GenerationResult, GenerationStats, StepRecord

__all__ = ["DecodeError", "generate", "PROVENANCE", "GenerationResult", "GenerationStats", "StepRecord"]
