"""Trace replay: evaluate any speculation policy on a recorded greedy trace without running a model.

    trace.py     the trace format (one safetensors file), ``load_trace``, the device ``CostModel``, test traces
    simulate.py  ``replay(policy, trace)``: the decoder's loop over trace lookups; exact for lossless policies
    compare.py   real ``GenerationResult``s in the same terms, side by side with a replay

Record a trace with ``python -m experiments.record``; tune thresholds on it with ``python -m experiments.tune``.
Like the decoder, replay drives policies through ``StepState`` / ``StepOutcome`` only (imports: policies, numpy).

Example:
    >>> from specpolicy.replay import load_trace, replay
    >>> trace = load_trace("runs/record/2024-01-01_12-00-00/trace.safetensors")
    >>> replay("threshold", trace, tau_extend=0.3).summary["tpf"]
    2.91
"""

from .compare import EXACT_FIELDS, prompt_from_generation, side_by_side, summarise_generations
from .simulate import PromptReplay, ReplayError, ReplayResult, replay, summarise_prompts
from .trace import TRACE_VERSION, CostModel, Trace, TraceError, load_trace, rows_from_steps, synthetic_trace

__all__ = [
    "EXACT_FIELDS", "TRACE_VERSION", "CostModel", "PromptReplay", "ReplayError", "ReplayResult", "Trace",
    "TraceError", "load_trace", "prompt_from_generation", "replay", "rows_from_steps", "side_by_side",
    "summarise_generations", "summarise_prompts", "synthetic_trace",
]
