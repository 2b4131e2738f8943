"""Training losses for MTP models: the joint main + MTP loss, residual dropout hooks, and the unlikelihood step.

Used by ``experiments.train_tiny``; usable for any :class:`~specpolicy.models.mtp.MTPModel` (transformers backbone
plus ``MtpModel``), e.g. to fine-tune a real MTP checkpoint against looping.

Example:
    >>> ids = batch_at(stream, starts, seq_len=512)             # [B, 513] windows of a token stream
    >>> main, per_depth = mtp_losses(model, ids, depths=4)      # CE of the target and of MTP depths 1..4
    >>> ul, anchor, mtp = ul_step_loss(model, stream, cfg, gen, autocast, teacher)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .mtp import mtp_chain_logits
from .quality import loop_share
from .unlikelihood import copy_start_mask, greedy_continue, repeated_ngram_mask, unlikelihood_from_logits


def batch_at(stream: torch.Tensor, starts: torch.Tensor, seq_len: int) -> torch.Tensor:
    starts = starts.to(stream.device)
    idx = starts[:, None] + torch.arange(seq_len + 1, device=stream.device)[None, :]  # [B, T+1]
    return stream[idx].long()


def mtp_losses(model, ids: torch.Tensor, depths: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Main CE and per-depth MTP CE on a batch ids [B, T+1] (inputs ids[:, :T], labels shifted)."""
    x = ids[:, :-1]
    out = model.target.model(input_ids=x)
    h0 = out.last_hidden_state  # [B, T, H]
    main = F.cross_entropy(model.target.lm_head(h0).flatten(0, 1).float(), ids[:, 1:].flatten())
    mtp = []
    for j, logits in enumerate(mtp_chain_logits(model.drafter, h0, x, depths), start=1):
        # logits[:, i] predicts t_{i+j+1}; inside the window that label is ids[:, i+j+1] for i < T-j
        labels = ids[:, j + 1 :]  # [B, T-j]
        mtp.append(F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten()))
    return main, mtp


def add_dropout(model, p: float) -> None:
    """Dropout on every attention/MLP branch output and on the embeddings, active only in train mode.

    Llama has no residual dropout; on ~9M tokens of stdlib the model overfits within three epochs without it.
    Forward hooks keep the architecture (and the exported checkpoint) exactly transformers' own."""
    if p <= 0:
        return

    def hook(module, args, out):
        if not module.training:
            return out
        if isinstance(out, tuple):
            return (F.dropout(out[0], p, True),) + tuple(out[1:])
        return F.dropout(out, p, True)

    blocks = list(model.target.get_decoder().layers) + [layer.mtp_block for layer in model.drafter.layers]
    for block in blocks:
        block.self_attn.register_forward_hook(hook)
        block.mlp.register_forward_hook(hook)
    model.target.get_input_embeddings().register_forward_hook(hook)


def ul_step_loss(model, stream: torch.Tensor, tc, gen: torch.Generator, autocast, teacher=None):
    """Sequence-level unlikelihood: continue real prefixes greedily, penalise the tokens of repeated n-grams.

    ``tc`` carries the ``ul_*`` settings, ``batch_size``/``seq_len`` and ``train_depths`` (see
    ``experiments.train_tiny.TrainConfig``, where each is documented).

    Returns (UL loss, weighted anchor, per-depth MTP losses):
    - anchor (with ``teacher``, the frozen starting model): ``ul_anchor`` * KL(teacher || model) on the continuation
      at every position whose next token is not penalised (``ul_anchor_region``), plus ``ul_anchor_real`` * the same
      KL on a batch of real text, so the model changes where it loops and as little as possible elsewhere;
    - MTP (``ul_mtp``): cross-entropy of depth j against the current target's own distribution at the same token
      (self-distillation: the drafter is judged on agreeing with the target, not with the text)."""
    starts = torch.randint(0, len(stream) - tc.ul_prefix - 1, (tc.ul_batch,), generator=gen)
    prefix = batch_at(stream, starts, tc.ul_prefix - 1)  # [B, ul_prefix]
    model.target.eval()
    with autocast():
        seqs = greedy_continue(model.target, prefix, tc.ul_new_tokens)
    model.target.train()
    if tc.ul_span > 0:
        mask = copy_start_mask(seqs.cpu(), tc.ul_ngram, start=tc.ul_prefix, span=tc.ul_span).to(seqs.device)
    else:
        mask = repeated_ngram_mask(seqs.cpu(), tc.ul_ngram, start=tc.ul_prefix).to(seqs.device)
    zero = torch.zeros((), device=seqs.device)
    with autocast():
        x = seqs[:, :-1]
        h0 = model.target.model(input_ids=x).last_hidden_state
        logits = model.target.lm_head(h0).float()  # [B, T, V]; position i predicts seqs[:, i + 1]
        t_logp = None  # the starting model on the continuation: for the anchor there, or as the entropy reference
        if teacher is not None and (tc.ul_anchor > 0 or tc.ul_weight == "entropy"):
            with torch.no_grad():
                t_logp = F.log_softmax(teacher(input_ids=x).logits.float(), -1)
        weight = None
        if tc.ul_weight == "entropy":  # forced tokens (newline, indentation, ' =') weigh ~0; real choices weigh most
            with torch.no_grad():
                ref = t_logp if t_logp is not None else F.log_softmax(logits.detach(), -1)
                weight = -(ref.exp() * ref).sum(-1)  # [B, T]
        ul = unlikelihood_from_logits(logits, seqs, mask, weight)
        anchor = zero
        if teacher is not None:
            if tc.ul_anchor > 0:
                keep = ~mask[:, 1:]  # position i predicts token i + 1
                if tc.ul_anchor_region == "clean":  # the real prefix and the continuation before it first loops
                    T = mask.shape[1]
                    first = torch.where(mask.any(1), mask.float().argmax(1), torch.full_like(mask[:, 0], T, dtype=torch.long))
                    keep = torch.arange(1, T, device=mask.device)[None, :] < first[:, None]
                kl = F.kl_div(F.log_softmax(logits, -1), t_logp, log_target=True, reduction="none").sum(-1)  # [B, T]
                anchor = tc.ul_anchor * (kl * keep).sum() / keep.sum().clamp(min=1)
            if tc.ul_anchor_real > 0:  # real (unseen) text: keep the model's predictions where there is no loop
                starts = torch.randint(0, len(stream) - tc.seq_len - 1, (tc.batch_size,), generator=gen)
                real = batch_at(stream, starts, tc.seq_len)[:, :-1]
                with torch.no_grad():
                    r_logp = F.log_softmax(teacher(input_ids=real).logits.float(), -1)
                r_kl = F.kl_div(F.log_softmax(model.target(input_ids=real).logits.float(), -1), r_logp,
                                log_target=True, reduction="none").sum(-1).mean()
                anchor = anchor + tc.ul_anchor_real * r_kl
        mtp = []
        if tc.ul_mtp:
            target_p = F.softmax(logits.detach(), -1)
            for j, mlogits in enumerate(mtp_chain_logits(model.drafter, h0, x, tc.train_depths), start=1):
                # depth-j entry i predicts token i+j+1, which the target predicts at position i+j
                mtp.append(F.cross_entropy(mlogits.flatten(0, 1).float(), target_p[:, j:].flatten(0, 1)))
    return ul, anchor, mtp


@torch.no_grad()
def loop_monitor(model, prompts: torch.Tensor, new_tokens: int, autocast) -> float:
    """Share of greedy continuations of ``prompts`` [N, P] that loop (an 8-gram 3+ times), in batches of 32."""
    gens = []
    for chunk in prompts.split(32):
        with autocast():
            out = greedy_continue(model.target, chunk, new_tokens)
        gens += out[:, chunk.shape[1]:].tolist()
    return loop_share(gens)


def warmup_cosine_lr(step: int, lr: float, warmup_steps: int, total_steps: int, min_ratio: float = 1.0) -> float:
    """Learning rate of step ``step`` (0-based): linear warmup over ``warmup_steps``, then ``lr`` (``min_ratio`` = 1)
    or a cosine from ``lr`` down to ``lr * min_ratio`` at ``total_steps``. Used by ``experiments.train_heads``.

    >>> warmup_cosine_lr(0, 1e-3, 10, 100), warmup_cosine_lr(100, 1e-3, 10, 100, 0.1)
    (0.0001, 0.0001)
    """
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    if min_ratio == 1.0:
        return lr * warm
    t = min(1.0, max(0, step - warmup_steps) / max(1, total_steps - warmup_steps))
    return lr * warm * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
