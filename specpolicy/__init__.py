"""specpolicy: confidence-gated and adaptive speculation policies for multi-token-prediction decoders.

    >>> from specpolicy import load_model, generate, get_policy
    >>> model = load_model("tiny")
    >>> res = generate(model, "def parse(", policy=get_policy("threshold", tau_trust=0.95), max_new_tokens=128)
    >>> res.text, res.provenance, res.stats.tpf
"""

from . import calibration  # noqa: F401  (registers the "calibrated" policy wrapper)
from ._version import __version__
from .decoding import Drafter, GenerationResult, generate
from .models.loading import load_model
from .policies import Action, Policy, StepOutcome, StepState, get_policy, list_policies, register_policy

__all__ = [
    "__version__", "load_model", "generate", "Drafter", "GenerationResult", "Policy", "Action", "StepState",
    "StepOutcome",
    "register_policy", "get_policy", "list_policies",
]
