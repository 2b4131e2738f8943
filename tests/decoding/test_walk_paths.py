"""The walk's strict fast path (no trusted drafts, no relaxed rule) against its general path.

``walk`` takes a shorter route when nothing can be committed past a rejection; a relaxed rule that never accepts
forces the general route over the same verdicts, so both must give the same block and ask the judge the same
strict/target questions in the same order.
"""

from __future__ import annotations

import itertools

import pytest

from specpolicy.decoding.step import walk


class Logged:
    """Fixed strict verdicts; the target's token at position j is 100 + j; a relaxed rule that never accepts."""

    def __init__(self, verdicts):
        self.verdicts, self.log = verdicts, []

    def strict(self, j, clean):
        self.log.append(("strict", j, clean))
        return self.verdicts[j], 0.25 + j

    def relaxed(self, j):
        return False

    def target(self, j, clean, rejected):
        self.log.append(("target", j, clean, rejected))
        return 100 + j


@pytest.mark.parametrize("m", [0, 1, 2, 4])
@pytest.mark.parametrize("eos", [(), frozenset({2}), frozenset({101}), [3]])
def test_strict_fast_path_equals_the_general_walk(m, eos):
    drafts = tuple(range(1, m + 1))
    for verdicts in itertools.product([True, False], repeat=m):
        fast, general = Logged(verdicts), Logged(verdicts)
        a = walk(drafts, (False,) * m, fast, relaxed=False, eos=eos)
        b = walk(drafts, (False,) * m, general, relaxed=True, eos=eos)
        assert a == b and fast.log == general.log, (verdicts, eos)
        assert a.accepted == len(a.committed) - (a.provenance[-1] == "target")
