"""specpolicy: confidence-gated and adaptive speculation policies for multi-token-prediction decoders."""

from .models.loading import load_model

__all__ = ["load_model"]
