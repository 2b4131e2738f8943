"""Drafters: the ``Drafter`` protocol (``base``) and its implementations (``mtp``: DeepSeek-V3 style MTP layers).

``drafter_for(model)`` builds a fresh drafter for one of ``load_model``'s models (its MTP layers today).

Example:
    >>> d = drafter_for(load_model("tiny")); d.name, d.native_depths
    ('mtp', 2)
"""

from .base import Drafter, check_drafter
from .mtp import MTPDrafter

__all__ = ["Drafter", "MTPDrafter", "check_drafter", "drafter_for"]


def drafter_for(model) -> Drafter:
    """The drafter of a loaded model (``model.drafter`` holds its weights), fresh for one generation at a time."""
    return MTPDrafter(model.drafter)
