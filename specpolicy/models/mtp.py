"""The MTP model container (target + drafter + tokenizer) and the teacher-forced MTP chain used in training.

The drafter is transformers' own ``MtpModel`` (DeepSeek-V3 style ``MtpLayer``s: ``eh_proj([enorm(emb(t)), hnorm(h)])``
-> one decoder block -> shared head). Depth ``j`` uses MTP layer ``min(j, K) - 1``: drafting past the last of the K
layers re-uses it, as vLLM does for DeepSeek's single layer, and training teaches that re-use.

Indexing (one notation everywhere): ``h^0_i`` is the target's final hidden state at position ``i`` (it predicts
``t_{i+1}``). Depth ``j`` at index ``i`` reads ``emb(t_{i+j})`` and ``h^{j-1}_i``, writes ``h^j_i`` and predicts
``t_{i+j+1}``; its RoPE position is ``i + j`` (the position of the token it reads) and it attends over the depth-``j``
states at indices ``<= i``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


def drafter_label(kind: str, arg: str = "") -> str:
    """The name the drafter of ``load_model(drafter=f"{kind}:{arg}")`` carries in traces, calibrators and summaries:
    its kind, and ``mtp-int8`` for the MTP layers in int8 (``mtp:int8``), whose drafts are another drafter's.

    Example:
        >>> drafter_label("mtp", "int8"), drafter_label("medusa", "runs/heads")
        ('mtp-int8', 'medusa')
    """
    return "mtp-int8" if kind == "mtp" and arg == "int8" else kind


@dataclass
class MTPModel:
    """What research code holds: ``model.target`` (causal LM), ``model.drafter`` (the drafter's weights: an MtpModel,
    Medusa heads, a draft model, or None for prompt lookup), ``model.tokenizer``; ``drafter_name`` says which kind
    (``decoding.drafters.drafter_for`` builds the drafter from it) and ``drafter_arg`` where it came from (or which
    variant: ``int8``); ``drafter_label`` is the name its drafter carries in traces, calibrators and summaries."""

    target: nn.Module
    drafter: nn.Module | None
    tokenizer: object
    name: str = "custom"
    card: dict = field(default_factory=dict)
    drafter_name: str = "mtp"
    drafter_arg: str = ""

    @property
    def drafter_label(self) -> str:
        return drafter_label(self.drafter_name, self.drafter_arg)

    @property
    def num_mtp_layers(self) -> int:
        """K MTP layers (0 for another kind of drafter)."""
        return len(self.drafter.layers) if self.drafter_name == "mtp" else 0

    @property
    def device(self) -> torch.device:
        return next(self.target.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.target.parameters()).dtype

    @property
    def eos_token_id(self) -> int | None:
        return getattr(self.tokenizer, "eos_token_id", None) if self.tokenizer is not None else None

    def fingerprint(self) -> str:
        """Short id of the weights: model name + card's sha (or parameter count for unnamed models). The target's:
        traces and calibrators name their drafter separately (``drafter_name``)."""
        sha = self.card.get("weights_sha256")
        if sha:
            return f"{self.name}:{sha[:16]}"
        drafter = self.drafter.parameters() if self.drafter is not None and self.drafter_name == "mtp" else ()
        n = sum(p.numel() for p in self.target.parameters()) + sum(p.numel() for p in drafter)
        return f"{self.name}:params={n}"


def layer_for_depth(depth: int, num_mtp_layers: int) -> int:
    """Index of the MTP layer that drafts depth ``depth`` (1-based); past the last layer, re-use it."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return min(depth, num_mtp_layers) - 1


def mtp_chain_logits(drafter, h0: torch.Tensor, input_ids: torch.Tensor, depths: int) -> list[torch.Tensor]:
    """Teacher-forced MTP chain over a full sequence (training and evaluation; no cache).

    h0:        [B, T, H] target final hidden states
    input_ids: [B, T]
    returns    list over depth j = 1..depths of logits [B, T - j, V]; entry i predicts t_{i+j+1}
               (the last index of each has no label inside the window and is dropped by the loss).
    """
    B, T, _ = h0.shape
    h = h0
    out = []
    for j in range(1, depths + 1):
        n = T - j  # indices i = 0..T-1-j have an input token t_{i+j}
        if n <= 0:
            break
        pos = torch.arange(j, j + n, device=h0.device).unsqueeze(0).expand(B, n)
        h = drafter.forward_layer(
            layer_for_depth(j, len(drafter.layers)), h[:, :n], pos, None, input_ids=input_ids[:, j : j + n]
        )
        out.append(mtp_logits(drafter, h))
    return out


def mtp_logits(drafter, h: torch.Tensor) -> torch.Tensor:
    """Logits of MTP hidden states h: [..., H] -> [..., V] through the head shared with the target, exactly as
    transformers applies it (muP scaling, unpadded vocabulary slice). The one call of its private helper."""
    return drafter._project_to_logits(h)
