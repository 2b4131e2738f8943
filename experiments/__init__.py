"""Runnable apps (Hydra), ``python -m experiments.<name>``; configs in ``experiments/conf/``.

Importing the package sets ``OMP_WAIT_POLICY=PASSIVE`` (unless set) before any app imports torch: on a loaded CPU,
OpenMP's busy-waiting makes multi-token forwards ~10x slower. What the apps share lives in ``experiments.common``.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
