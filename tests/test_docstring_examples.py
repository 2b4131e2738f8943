"""The docstring examples that run on their own (no model, trace or run directory named in them) run, and pass.

Examples elsewhere show a call in context (``generate(model, ...)``, ``load_trace("trace.safetensors")``) and are
documentation only; a module whose examples all become self-contained belongs in this list."""

from __future__ import annotations

import doctest
import importlib

import pytest

SELF_CONTAINED = [
    "specpolicy.decoding.acceptance", "specpolicy.decoding.result", "specpolicy.decoding.step",
    "specpolicy.metrics.lossy", "specpolicy.metrics.pareto", "specpolicy.models.unlikelihood",
    "specpolicy.policies", "specpolicy.policies.base", "specpolicy.policies.registry", "specpolicy.policies.fixed",
    "specpolicy.policies.threshold", "specpolicy.policies.entropy", "specpolicy.policies.heuristic",
    "specpolicy.policies.relaxed", "specpolicy.policies.goodput", "specpolicy.runs.arms",
]


@pytest.mark.parametrize("name", SELF_CONTAINED)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
