"""Trace replay: evaluate any speculation policy on a recorded greedy trace without running a model.

    trace.py     the trace format (one safetensors file), ``load_trace``, synthetic test traces
    record.py    ``record_trace``: greedy decodes with the drafter's chain probed at every position
    simulate.py  ``replay(policy, trace)``: the decoder's step core over trace lookups; exact for lossless policies
    compare.py   real decodes in the same terms (``decode_real``), side by side with a replay (``compare_row``)
    speed.py     ``replay_speed``: how fast each policy replays (a benchmark)

The device ``CostModel`` lives in ``specpolicy.decoding.cost`` (re-exported here).

Record a trace with ``python -m experiments.record``; tune thresholds on it with ``python -m experiments.tune``.
Like the decoder, replay drives policies through ``StepState`` / ``StepOutcome`` and the same step core
(``specpolicy.decoding.step``); it runs no model (recording and ``decode_real`` do).

Example:
    >>> from specpolicy.replay import load_trace, replay
    >>> trace = load_trace("runs/record/2024-01-01_12-00-00/trace.safetensors")
    >>> replay("threshold", trace, tau_extend=0.3).summary["tpf"]
    2.91
"""

from .compare import (
    EXACT_FIELDS,
    compare_row,
    decode_real,
    markdown,
    prompt_from_generation,
    side_by_side,
    summarise_generations,
)
from .record import ChainProbe, record_trace
from .simulate import (
    CONFIDENCE_TOLERANCE,
    PromptReplay,
    ReplayError,
    ReplayResult,
    replay,
    summarise_prompts,
)
from .speed import replay_speed
from .trace import TRACE_VERSION, CostModel, Trace, TraceError, load_trace, synthetic_trace

__all__ = [
    "CONFIDENCE_TOLERANCE", "EXACT_FIELDS", "TRACE_VERSION", "ChainProbe", "CostModel", "PromptReplay", "ReplayError", "ReplayResult",
    "Trace", "TraceError", "compare_row", "decode_real", "load_trace", "markdown", "prompt_from_generation",
    "record_trace", "replay", "replay_speed", "side_by_side", "summarise_generations", "summarise_prompts",
    "synthetic_trace",
]
