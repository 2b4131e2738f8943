"""A separate draft model for classic speculative decoding: build, save and load a small causal LM that shares the
target's tokenizer (Leviathan et al. 2023; transformers' ``assistant_model``).

Two kinds of checkpoint load through ``load_draft_model``:

- **any transformers causal LM** (a local directory or a hub id) whose vocabulary is the target's: loaded with
  ``from_pretrained(use_safetensors=True, trust_remote_code=False)``;
- **a shared-head draft model** written by ``save_draft_model`` (the one shipped beside the embedded target in
  ``assets/tiny/draft/``): the file holds only the draft's own decoder layers and final norm; its token embedding
  and LM head are the target's own modules, tied at load time, so it costs a few MB. ``draft_for.json`` records
  which target it was made for (hidden size, vocabulary, the target's weights sha).

A draft model whose vocabulary is not the target's (another size, or a tokenizer with other tokens) is refused with
one line (``CheckpointError``): its q would be over other tokens, and d_j would be meaningless to the target.

Example:
    >>> model = load_model("tiny", drafter="draft")                      # the shipped shared-head draft model
    >>> model = load_model("org/big-model", drafter="draft:org/small-model")
    >>> save_draft_model(draft_lm, "runs/draft/export", target_card=model.card)
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch

__all__ = ["DRAFT_DIR", "RECORD", "build_shared_draft", "load_draft_model", "own_state_dict", "save_draft_model",
           "tie_to_target"]

DRAFT_DIR = "draft"  # "draft" without an argument: <target dir>/draft
RECORD = "draft_for.json"  # which target a shared-head draft model was made for
SHARED = ("embed", "lm_head")  # what a shared-head checkpoint takes from the target

def tie_to_target(draft, target) -> None:
    """Make ``draft`` use the target's token embedding and LM head modules (shared, not copied)."""
    draft.set_input_embeddings(target.get_input_embeddings())
    draft.set_output_embeddings(target.get_output_embeddings())


def own_state_dict(draft) -> dict[str, torch.Tensor]:
    """The draft's own tensors: everything but the (shared) token embedding and LM head."""
    shared = {id(p) for m in (draft.get_input_embeddings(), draft.get_output_embeddings()) for p in m.parameters()}
    return {k: v for k, v in draft.state_dict(keep_vars=True).items() if id(v) not in shared}


def build_shared_draft(target, num_layers: int = 2, init_layers: tuple[int, ...] | None = None):
    """A fresh Llama-style draft LM with the target's layer shape and ``num_layers`` decoder layers, sharing the
    target's embedding and head. ``init_layers``: copy these target layers (and the final norm) into the draft's
    layers (one index per draft layer); None keeps the random initialisation.

    >>> draft = build_shared_draft(model.target, 2, init_layers=(0, 7))
    """
    import copy

    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(target.config.get_text_config())
    cfg.num_hidden_layers = num_layers
    if hasattr(cfg, "num_mtp_layers"):
        cfg.num_mtp_layers = None  # a draft model has no MTP layers of its own
    if hasattr(cfg, "layer_types") and cfg.layer_types is not None:
        cfg.layer_types = cfg.layer_types[:num_layers]
    cfg.tie_word_embeddings = False
    draft = AutoModelForCausalLM.from_config(cfg).to(target.dtype)
    if init_layers is not None:
        src = target.get_decoder()
        if len(init_layers) != num_layers or not all(0 <= i < len(src.layers) for i in init_layers):
            raise ValueError(f"init_layers={tuple(init_layers)}: allowed: {num_layers} indices in "
                             f"[0, {len(src.layers) - 1}]")
        with torch.no_grad():
            for mine, i in zip(draft.get_decoder().layers, init_layers):
                mine.load_state_dict(src.layers[i].state_dict())
            draft.get_decoder().norm.load_state_dict(src.norm.state_dict())
    tie_to_target(draft, target)
    return draft.eval()


def save_draft_model(draft, out_dir: str | Path, target_card: dict | None = None, shared: bool = True,
                     dtype: torch.dtype = torch.float16, card: dict | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` (``dtype``) and, for a shared-head draft model, ``draft_for.json``
    (the target it was made for: ``target_card``'s name and weights sha). ``shared=False`` writes a standalone
    transformers checkpoint (embedding and head included). ``card``: written as ``card.json`` with the weights'
    sha256 and file sizes added.

    >>> save_draft_model(draft, "runs/train_draft/export", target_card=model.card, card={"figures": ...})
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = own_state_dict(draft) if shared else dict(draft.state_dict())
    sd = {k: v.detach().to("cpu", dtype).contiguous() for k, v in sd.items()}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "model.safetensors").chmod(0o644)  # safetensors writes 0600; a shipped asset must be readable by all
    draft.config.save_pretrained(out)
    if shared:
        tc = target_card or {}
        record = {"shares": list(SHARED), "hidden_size": draft.config.get_text_config().hidden_size,
                  "vocab_size": draft.config.get_text_config().vocab_size, "target_name": tc.get("name"),
                  "target_weights_sha256": tc.get("weights_sha256")}
        (out / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    if card is not None:
        files = sorted(p for p in out.iterdir() if p.is_file() and p.name != "card.json")
        card = dict(card, weights_sha256=hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest(),
                    file_bytes={p.name: p.stat().st_size for p in files})
        (out / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return out


def _resolve(path: str, arg: str) -> str:
    from .loading import CheckpointError

    if not arg:
        local = Path(path) / DRAFT_DIR
        if not (local / "config.json").exists():
            raise CheckpointError(f"drafter 'draft': no draft model beside the target ({local} has no config.json); "
                                  "allowed: draft:<directory or hub id>, or save one there with save_draft_model")
        return str(local)
    p = Path(arg).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise CheckpointError(f"draft model directory {arg!r} has no config.json; allowed: a transformers "
                                  "causal LM checkpoint directory or hub id")
        return str(p)
    if arg.startswith((".", "/", "~")) or arg.count("/") != 1:
        raise CheckpointError(f"draft model {arg!r} not found; allowed: an existing directory or a hub id 'org/name'")
    return arg


def _check_vocab(where: str, cfg, target, tokenizer) -> None:
    """Same vocabulary size; and the same token -> id map when both sides have a tokenizer."""
    from .loading import CheckpointError

    mine, theirs = cfg.get_text_config().vocab_size, target.config.get_text_config().vocab_size
    if mine != theirs:
        raise CheckpointError(f"draft model {where}: vocabulary size {mine} != the target's {theirs}; allowed: a "
                              "draft model with the target's tokenizer")
    if tokenizer is None:
        return
    from transformers import AutoTokenizer

    local = Path(where).exists()
    if local and not any((Path(where) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        return  # no tokenizer of its own: it uses the target's (checked by size above)
    try:
        draft_tok = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError, KeyError, TypeError):  # a hub model without a tokenizer
        return
    if draft_tok.get_vocab() != tokenizer.get_vocab():
        raise CheckpointError(f"draft model {where}: its tokenizer's vocabulary differs from the target's; allowed: "
                              "a draft model with the target's tokenizer")


def _load_shared(where: str, cfg, record: dict, target, target_sha: str | None, dtype):
    """A ``save_draft_model`` checkpoint: own layers from the file, embedding and head tied to the target's."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from .loading import CheckpointError

    hidden = target.config.get_text_config().hidden_size
    if record.get("hidden_size", cfg.get_text_config().hidden_size) != hidden:
        raise CheckpointError(f"draft model {where}: hidden size {record.get('hidden_size')} != the target's {hidden}; "
                              "allowed: a shared-head draft model made for this target")
    f = Path(where) / "model.safetensors"
    try:
        sd = load_file(str(f))
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(f"draft model weights {f} are unreadable (truncated or corrupt: "
                              f"{' '.join(str(err).split())}); allowed: a file written by save_draft_model") from None
    draft = AutoModelForCausalLM.from_config(cfg)
    draft.to(dtype)
    tie_to_target(draft, target)
    expected = set(own_state_dict(draft))
    if set(sd) != expected:
        missing, extra = sorted(expected - set(sd)), sorted(set(sd) - expected)
        raise CheckpointError(f"draft model weights {f} do not match its config.json (missing {missing[:3]}, "
                              f"unexpected {extra[:3]}); allowed: a file written by save_draft_model")
    draft.load_state_dict(sd, strict=False)
    sha = record.get("target_weights_sha256")
    if sha and target_sha and sha != target_sha:
        warnings.warn(f"draft model {where} was made for target weights {sha[:12]}, not {target_sha[:12]}: decoding "
                      "stays lossless, acceptance may be lower", stacklevel=3)
    return draft


def load_draft_model(target, tokenizer, path: str, arg: str, device, dtype):
    """The draft LM for ``load_model(..., drafter="draft[:<arg>]")``: ``arg`` a local directory or hub id of a causal
    LM with the target's vocabulary, or "" for ``<path>/draft`` (the model shipped beside the target). Safetensors
    only, no remote code. Bad weights or another vocabulary: one-line ``CheckpointError``.

    >>> lm = load_draft_model(model.target, model.tokenizer, "specpolicy/models/assets/tiny", "", "cpu", torch.float32)
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from .loading import CheckpointError

    where = _resolve(path, arg)
    try:
        cfg = AutoConfig.from_pretrained(where, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"draft model {where}: config.json is unusable ({' '.join(str(err).split())[:200]}); "
                              "allowed: a transformers causal LM checkpoint") from None
    _check_vocab(where, cfg, target, tokenizer)
    record_path = Path(where) / RECORD
    from safetensors import SafetensorError

    if record_path.exists():
        card = Path(path) / "model_card.json"  # the target's card: which weights the draft model was made for
        target_sha = json.loads(card.read_text()).get("weights_sha256") if card.exists() else None
        draft = _load_shared(where, cfg, json.loads(record_path.read_text()), target, target_sha, dtype)
    else:
        try:
            draft = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, use_safetensors=True,
                                                         trust_remote_code=False)
        except (OSError, ValueError, RuntimeError, SafetensorError) as err:
            raise CheckpointError(f"draft model {where} cannot be loaded ({' '.join(str(err).split())[:300]}); "
                                  "allowed: a transformers causal LM with safetensors weights") from None
    return draft.to(device).to(dtype).eval().requires_grad_(False)
