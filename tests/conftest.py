"""What every test shares: torch on one thread, as the apps run (``threads=1``).

The models of the tests are tiny: a forward is a few small matrix products, and OpenMP's second thread costs more
than it saves (README, "Speed": the embedded model drafts about twice as fast on one thread as on two of the 2-core
machine; DESIGN: on a loaded machine OpenMP's busy-wait makes multi-token forwards 10x slower). CI sets no
``OMP_NUM_THREADS``, so torch would otherwise use both cores. Set once when the tests are collected, so that
module-scoped fixtures which build models or references run on one thread too, and again around every test, so that a
test which changes it leaves the others as they were.
"""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
