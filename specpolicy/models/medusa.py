"""Medusa-1 heads: K stacks of residual blocks on the target's last hidden state, read through the target's LM head.

Indexing as in ``models.mtp``: ``h_i`` is the target's final hidden state at index i (the output of
``target.get_decoder()``, already final-normed); the target's head reads it to predict ``t_{i+1}``. Head k (1-based)
predicts ``t_{i+k+1}`` from the same ``h_i`` through L residual blocks (``num_layers``, as ``medusa_num_layers`` in
the Medusa reference code)::

    r_0 = h_i,   r_l = r_{l-1} + SiLU(W_{k,l} r_{l-1} + b_{k,l})  (l = 1..L),   logits_k(h_i) = lm_head(r_L)

The LM head is the target's (shared, frozen, never stored with the heads), so K heads cost K x L x (H^2 + H)
parameters. Every W and b starts at zero: every head starts as the target's next-token head. Drafting depth j reads
head j; past the K heads the last head is re-used (its features at deeper depths are untrained: it keeps predicting
t_{i+K+1}).

On disk a directory holds ``heads.safetensors`` and ``config.json`` (hidden_size, vocab_size, num_heads, num_layers,
the target they were trained for). Block 1 of head k is ``heads.{k}.weight`` / ``heads.{k}.bias``, block l >= 2 is
``blocks.{k}.{l-2}.weight`` / ``.bias`` (k = 0..K-1), so one-block heads (a config without ``num_layers``: 1) keep
the original layout. ``load_model(path, drafter="medusa")`` reads ``<path>/medusa``; ``drafter="medusa:<dir>"`` any
directory. ``greedy_rows`` and ``text_rows`` make the self-distillation rows ``experiments.train_heads`` trains on.

Example:
    >>> heads = MedusaHeads(hidden_size=320, vocab_size=4096, num_heads=4, num_layers=2)
    >>> logits = heads.logits(h, depth=1, lm_head=model.target.get_output_embeddings())   # h: [..., H] -> [..., V]
    >>> save_medusa_heads(heads, "runs/heads/medusa", {"target_weights_sha256": sha})
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MedusaHeads", "greedy_rows", "head_for_depth", "load_medusa_heads", "medusa_agreement", "medusa_labels",
           "medusa_loss", "save_medusa_heads", "soft_targets", "text_rows"]

WEIGHTS, CONFIG = "heads.safetensors", "config.json"
FORMAT = "specpolicy-medusa-1"


def head_for_depth(depth: int, num_heads: int) -> int:
    """Index (0-based) of the head that drafts depth ``depth`` (1-based); past the last head, re-use it."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return min(depth, num_heads) - 1


class MedusaHeads(nn.Module):
    """K Medusa-1 heads of ``num_layers`` residual blocks each (the LM head is passed in: it is the target's, not
    part of these weights).

    >>> heads = MedusaHeads(320, 4096, num_heads=4, num_layers=2)   # 4 x 2 x (320^2 + 320) parameters
    """

    def __init__(self, hidden_size: int, vocab_size: int, num_heads: int = 4, num_layers: int = 1):
        super().__init__()
        for name, v in (("num_heads", num_heads), ("num_layers", num_layers)):
            if v < 1:
                raise ValueError(f"{name}={v} is invalid; allowed: >= 1")
        self.hidden_size, self.vocab_size, self.num_heads = hidden_size, vocab_size, num_heads
        self.num_layers = num_layers
        self.heads = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(num_heads))  # block 1
        self.blocks = nn.ModuleList(nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(num_layers - 1))
                                    for _ in range(num_heads))  # blocks 2..L of each head
        with torch.no_grad():
            for p in self.parameters():  # zero residual branches: head k starts as the target's next-token head
                p.zero_()

    def features(self, h: torch.Tensor, k: int) -> torch.Tensor:
        """The L residual blocks of head index k (0-based) on h: [..., H] -> [..., H] (in h's dtype)."""
        x = h
        for lin in (self.heads[k], *self.blocks[k]):
            x = x + F.silu(lin(x.to(lin.weight.dtype)).to(h.dtype))
        return x

    def logits(self, h: torch.Tensor, depth: int, lm_head: nn.Module) -> torch.Tensor:
        """Logits [..., V] of the token ``depth + 1`` after the one ``h`` [..., H] predicts (depth 1-based)."""
        return lm_head(self.features(h, head_for_depth(depth, self.num_heads)))

    def forward(self, h: torch.Tensor, lm_head: nn.Module) -> list[torch.Tensor]:
        """All K heads: list over k = 1..K of logits [..., V]."""
        return [lm_head(self.features(h, k)) for k in range(self.num_heads)]


def medusa_labels(seqs: torch.Tensor, num_heads: int, start: int) -> torch.Tensor:
    """Labels [K, B, T - start] of every head at indices start..T-1: head k at index i is labelled ``seqs[i+k+1]``;
    -100 (ignored) where that index is past the sequence. seqs: [B, T] token ids."""
    B, T = seqs.shape
    labels = torch.full((num_heads, B, T - start), -100, dtype=torch.long, device=seqs.device)
    for k in range(1, num_heads + 1):
        lo = start + k + 1  # label index of the first row
        if lo < T:
            labels[k - 1, :, : T - lo] = seqs[:, lo:]
    return labels


def medusa_loss(heads: MedusaHeads, lm_head: nn.Module, h: torch.Tensor, labels: torch.Tensor,
                soft: list[torch.Tensor] | None = None, distill: float = 0.0) -> list[torch.Tensor]:
    """Mean loss per head over the labelled rows. h: [N, H] hidden-state rows, labels: [K, N] (-100 ignored) -> list
    of K scalars: the CE against the greedy label, or with ``soft`` (per head, the target's own next-token
    distribution [N, V] whose argmax is that label) ``(1 - distill) * CE(label) + distill * CE(soft)`` (Medusa-2's
    self-distillation: the full distribution, not only its argmax).

    >>> losses = medusa_loss(heads, lm_head, h, labels)                       # hard labels only
    """
    out = []
    for k, logits in enumerate(heads(h, lm_head)):  # logits [N, V]
        hard = F.cross_entropy(logits.float(), labels[k], ignore_index=-100)
        if soft is None or distill == 0:
            out.append(hard)
            continue
        ok = labels[k] != -100
        per_row = F.cross_entropy(logits.float(), soft[k], reduction="none")
        out.append((1 - distill) * hard + distill * per_row[ok].sum() / ok.sum().clamp(min=1))
    return out


@torch.no_grad()
def soft_targets(lm_head: nn.Module, h: torch.Tensor, idx: torch.Tensor, num_heads: int) -> list[torch.Tensor]:
    """The target's next-token distributions for rows ``idx`` of greedy-continuation rows h [N, H] (rows of one
    sequence consecutive, as ``greedy_rows`` keeps them): head k (1-based) at row r learns ``softmax(lm_head(h[r +
    k]))``, the target's distribution of the token its label is the argmax of (rows past N are clamped; they only
    occur where the label is -100 and are masked by ``medusa_loss``).

    >>> soft = soft_targets(lm_head, h, idx, 4)                               # 4 tensors [len(idx), V]
    """
    n = h.shape[0]
    return [F.softmax(lm_head(h[(idx + k).clamp(max=n - 1)].to(lm_head.weight.dtype)).float(), dim=-1)
            for k in range(1, num_heads + 1)]


@torch.no_grad()
def medusa_agreement(heads: MedusaHeads, lm_head: nn.Module, h: torch.Tensor, labels: torch.Tensor,
                     chunk: int = 4096) -> list[tuple[int, int]]:
    """(argmax == label, counted) per head over rows h [N, H] with labels [K, N] (-100 not counted)."""
    hits, counts = [0] * heads.num_heads, [0] * heads.num_heads
    for a in range(0, h.shape[0], chunk):
        for k, logits in enumerate(heads(h[a : a + chunk], lm_head)):
            lab = labels[k, a : a + chunk]
            ok = lab != -100
            hits[k] += int((logits.argmax(-1)[ok] == lab[ok]).sum())
            counts[k] += int(ok.sum())
    return list(zip(hits, counts))


@torch.no_grad()
def greedy_rows(target, prompts: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy continuations [B, P + new] of prompts [B, P] (KV cached, as ``greedy_continue``) and the target's final
    hidden states [B, new, H] at indices P-1 .. P+new-2, kept while decoding (the rows whose next token is greedy).

    >>> seqs, hidden = greedy_rows(model.target, prompts, 128)   # training rows of experiments.train_heads
    """
    from transformers import DynamicCache

    body, lm_head = target.get_decoder(), target.get_output_embeddings()
    cache = DynamicCache(config=target.config)
    h = body(input_ids=prompts, cache=cache).last_hidden_state[:, -1:]  # [B, 1, H]: index P-1
    hs, toks = [h], [lm_head(h).argmax(-1)]
    for _ in range(new_tokens - 1):
        h = body(input_ids=toks[-1], cache=cache).last_hidden_state
        hs.append(h)
        toks.append(lm_head(h).argmax(-1))
    return torch.cat([prompts, *toks], dim=1), torch.cat(hs, dim=1)


@torch.no_grad()
def text_rows(target, windows: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of real-text windows [B, W] that are greedy-continuation rows: index i counts when ``x_{i+1}`` is the
    target's greedy token there; head k is labelled with the greedy token ``g_{i+k}`` where ``x_{i+1..i+k}`` are the
    greedy chain from ``x_<=i`` (so the label is ``t_{i+k+1}`` of the target's greedy continuation of ``x_<=i``), else
    -100. Returns hidden states [N, H] and labels [K, N] of the counted indices.

    >>> h, labels = text_rows(model.target, windows, num_heads=4)   # windows: [B, W] token ids of real text
    """
    h = target.get_decoder()(input_ids=windows).last_hidden_state  # [B, W, H]
    g = target.get_output_embeddings()(h).argmax(-1)  # [B, W]: greedy next token at each index
    B, W = windows.shape
    ok = windows[:, 1:] == g[:, :-1]  # [B, W-1]: x_{i+1} is greedy at index i
    labels = torch.full((num_heads, B, W), -100, dtype=torch.long, device=windows.device)
    chain = ok.clone()
    for k in range(1, num_heads + 1):  # chain[:, i]: ok at i .. i+k-1 (indices i <= W-1-k)
        if k > 1:
            chain = chain[:, :-1] & ok[:, k - 1 :]
        labels[k - 1, :, : W - k] = torch.where(chain[:, : W - k], g[:, k:], -100)
    keep = labels[0] != -100  # [B, W]
    return h[keep], labels[:, keep]


def save_medusa_heads(heads: MedusaHeads, out_dir: str | Path, meta: dict | None = None,
                      dtype: torch.dtype = torch.float16) -> Path:
    """Write ``heads.safetensors`` (``dtype``) and ``config.json`` (sizes + ``meta``: the target fingerprint and
    weights sha they were trained for, how). Returns the directory.

    >>> save_medusa_heads(heads, "runs/x/medusa", {"target_fingerprint": model.fingerprint()})
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu", dtype).contiguous() for k, v in heads.state_dict().items()}
    save_file(sd, str(out / WEIGHTS), metadata={"format": "pt"})
    config = {**(meta or {}), "format": FORMAT, "hidden_size": heads.hidden_size, "vocab_size": heads.vocab_size,
              "num_heads": heads.num_heads, "num_layers": heads.num_layers,
              "dtype": str(dtype).removeprefix("torch.")}
    (out / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


def _fail(message: str):
    from .loading import CheckpointError

    return CheckpointError(message)


def _read_config(where: Path) -> dict:
    allowed = "allowed: a directory written by save_medusa_heads (python -m experiments.train_heads)"
    try:
        config = json.loads((where / CONFIG).read_text())
    except FileNotFoundError:
        raise _fail(f"Medusa heads {where}: no {CONFIG}; {allowed}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _fail(f"Medusa heads {where}/{CONFIG} is unreadable ({type(err).__name__}); {allowed}") from None
    config = config if isinstance(config, dict) else {}
    config = {"num_layers": 1, **config}  # heads written before num_layers existed have one block
    missing = [k for k in ("hidden_size", "vocab_size", "num_heads", "num_layers")
               if not isinstance(config.get(k), int)]
    if missing:
        raise _fail(f"Medusa heads {where}/{CONFIG} lacks integer {', '.join(missing)}; {allowed}")
    for key in ("num_heads", "num_layers"):
        if config[key] < 1:
            raise _fail(f"Medusa heads {where}/{CONFIG}: {key}={config[key]}; allowed: >= 1")
    return config


def _read_weights(where: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    f = where / WEIGHTS
    if not f.exists():
        raise _fail(f"Medusa heads {where}: no {WEIGHTS}; allowed: safetensors weights written by save_medusa_heads")
    try:
        return load_file(str(f))
    except Exception as err:  # safetensors raises SafetensorError / OSError on truncated or foreign files
        raise _fail(f"Medusa heads {f} is corrupt or not safetensors ({' '.join(str(err).split())[:120]}); "
                    "allowed: an intact file written by save_medusa_heads") from None


def _check_target(config: dict, target, where: Path) -> tuple[int, int]:
    """The heads' sizes must be the target's: hidden size of its last hidden state, rows of its LM head."""
    V, H = target.get_output_embeddings().weight.shape  # [V, H]
    for key, ours in (("hidden_size", H), ("vocab_size", V)):
        if config[key] != ours:
            raise _fail(f"Medusa heads {where} were trained for a model with {key}={config[key]}, this target has "
                        f"{key}={ours}; allowed: heads trained for this target (python -m experiments.train_heads)")
    return H, V


def _check_sha(config: dict, path: str, where: Path) -> None:
    """Warn (not fail) when the heads name another target checkpoint of the same shape (e.g. a fine-tune)."""
    card = Path(path) / "model_card.json"
    want = config.get("target_weights_sha256")
    if not want or not card.exists():
        return
    try:
        have = json.loads(card.read_text()).get("weights_sha256")
    except (OSError, json.JSONDecodeError):
        return
    if have and have != want:
        warnings.warn(f"Medusa heads {where} were trained for target weights {want[:12]}, this target is "
                      f"{have[:12]}: same shapes, other weights (acceptance may be lower)", stacklevel=3)


def load_medusa_heads(target, path: str, arg: str, device, dtype) -> MedusaHeads:
    """The heads in ``arg`` (a directory), or in ``<path>/medusa`` when ``arg`` is ""; in ``dtype``, on the device
    of the target's LM head (the heads read its input; with a device map that is where the last hidden state is),
    else on ``device``.

    Heads made for another target (hidden size or vocabulary), a missing or corrupt file: ``CheckpointError``
    (one line). Called by ``load_model(path, drafter="medusa[:<dir>]")``.

    >>> heads = load_medusa_heads(target, "specpolicy/models/assets/tiny", "", "cpu", torch.float32)
    """
    where = Path(arg).expanduser() if arg else Path(path) / "medusa"
    if not where.is_dir():
        raise _fail(f"no Medusa heads at {where}; allowed: drafter=medusa:<dir> with {WEIGHTS} + {CONFIG} "
                    "(train them with python -m experiments.train_heads)")
    config = _read_config(where)
    H, V = _check_target(config, target, where)
    sd = _read_weights(where)
    heads = MedusaHeads(H, V, config["num_heads"], config["num_layers"])
    want = {k: tuple(v.shape) for k, v in heads.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in sd.items()}
    if want != have:
        diff = sorted(set(want.items()) ^ set(have.items()))[:2]
        raise _fail(f"Medusa heads {where}/{WEIGHTS} do not match its {CONFIG} (num_heads={config['num_heads']}, "
                    f"num_layers={config['num_layers']}, hidden_size={H}): {diff}; allowed: the files written together by save_medusa_heads")
    if not all(torch.isfinite(v).all() for v in sd.values()):
        raise _fail(f"Medusa heads {where}/{WEIGHTS} hold non-finite values; allowed: finite weights")
    heads.load_state_dict(sd)
    _check_sha(config, path, where)
    head = target.get_output_embeddings().weight
    device = head.device if head.device.type != "meta" else device
    return heads.to(device=device, dtype=dtype or head.dtype).eval().requires_grad_(False)
