"""Build and load MTP models: the embedded ``tiny`` model and Hugging Face checkpoints with MTP layers.

Checkpoints are stored in the DeepSeek-V3 layout: the K MTP layers sit after the backbone as ``model.layers.{L+k}.*``
(``enorm``, ``hnorm``, ``eh_proj``, the decoder block's weights, ``post_norm``), and are loaded with transformers'
own ``MtpModel.from_pretrained``. So the embedded model and a real DeepSeek-V3 / GLM-4.5 checkpoint take the same path.

Writing checkpoints in that layout: ``specpolicy.models.checkpoint``.

Example:
    >>> model = load_model("tiny")                     # shipped inside the package, no download
    >>> model = load_model("/path/to/glm-4.5-air", device="cuda", dtype="bfloat16")
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import UserError
from .mtp import MTPModel

ASSET_DIR = Path(__file__).parent / "assets"
EMBEDDED = ("tiny",)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


@dataclass(frozen=True)
class TinyConfig:
    """Architecture of the embedded model: a Llama backbone + K DeepSeek-style MTP layers."""

    vocab_size: int = 4096
    hidden_size: int = 320
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    intermediate_size: int = 864
    num_mtp_layers: int = 2
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0

    def to_hf(self, eos_token_id: int | None = None, pad_token_id: int | None = None):
        from transformers import LlamaConfig

        kw = asdict(self)
        rope_theta = kw.pop("rope_theta")
        return LlamaConfig(
            **kw,
            rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
            tie_word_embeddings=False,
            bos_token_id=None,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )


class ModelNotFoundError(UserError):
    """A model name/path that is neither embedded nor an existing directory/hub id."""


def build_mtp_model(config, tokenizer=None, name: str = "custom", seed: int | None = None) -> MTPModel:
    """Fresh (random) target + drafter from a transformers config that has ``num_mtp_layers``.

    >>> model = build_mtp_model(TinyConfig(hidden_size=64, num_hidden_layers=2).to_hf(), seed=0)
    """
    from transformers import AutoModelForCausalLM
    from transformers.modeling_layers import MtpModel

    if seed is not None:
        torch.manual_seed(seed)
    target = AutoModelForCausalLM.from_config(config)
    k = getattr(config.get_text_config(), "num_mtp_layers", None)
    if not k:
        raise ValueError("config has no num_mtp_layers >= 1: this model has no MTP layers to draft with")
    drafter = MtpModel(target, k)
    # MtpModel's post_init only initialises standard layer types; MoE experts/routers (deepseek_v3, glm4_moe) would
    # keep uninitialised memory. Re-run the target's initialiser on the MTP layers only (embedding/head are shared).
    with torch.no_grad():
        for module in drafter.layers.modules():
            target._init_weights(module)
    return MTPModel(target.eval(), drafter.eval(), tokenizer, name=name)


def _mtp_key_patterns(num_hidden_layers: int, k: int) -> list[str]:
    return [rf"model\.layers\.{num_hidden_layers + i}\." for i in range(k)]


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    prev = hf_logging.get_verbosity()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        yield
    finally:
        hf_logging.set_verbosity(prev)
        if bar:
            hf_logging.enable_progress_bar()


def _has_accelerate() -> bool:
    import importlib.util

    return importlib.util.find_spec("accelerate") is not None


def resolve_model_path(name_or_path: str) -> str:
    """The local directory (embedded asset or checkpoint) or hub id that ``name_or_path`` names.

    A directory must hold ``config.json``; anything else that is not ``org/name`` is ``ModelNotFoundError``
    (one line). Weights are checked when loading (``_check_local_weights``).

    >>> resolve_model_path("tiny").endswith("assets/tiny")
    True
    """
    if name_or_path in EMBEDDED:
        return str(ASSET_DIR / name_or_path)
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelNotFoundError(f"model path {name_or_path!r} is a file; allowed: a checkpoint directory "
                                     "(config.json + *.safetensors), an embedded name or a hub id 'org/name'")
        if not (p / "config.json").exists():
            raise ModelNotFoundError(f"model directory {name_or_path!r} has no config.json; allowed: a transformers "
                                     "checkpoint directory (config.json + *.safetensors)")
        return str(p)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        raise ModelNotFoundError(
            f"model {name_or_path!r} not found: use an embedded name ({', '.join(EMBEDDED)}), "
            "an existing checkpoint directory, or a hub id 'org/name'"
        )
    return name_or_path  # a hub id: transformers resolves (and downloads) it


def _one_line(err: BaseException, limit: int = 240) -> str:
    """The first line of an exception's message, whitespace-collapsed and cut to ``limit`` characters."""
    text = " ".join(str(err).strip().splitlines()[0].split()) if str(err).strip() else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_local_weights(path: str) -> list[Path]:
    """The ``*.safetensors`` files of a local checkpoint, each with a readable, complete header.

    Pickled weights (``*.bin``, ``*.pt``) are refused: unpickling runs code. A truncated or corrupt file, or none:
    ``CheckpointError`` (one line, naming the file).
    """
    from safetensors import safe_open

    root = Path(path)
    files = sorted(root.glob("*.safetensors"))
    if not files:
        pickled = sorted(f.name for f in root.iterdir() if f.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        what = f"only pickled weights ({', '.join(pickled[:3])})" if pickled else "no weights"
        raise CheckpointError(f"checkpoint {path!r} has {what}; allowed: *.safetensors weights (pickled .bin files "
                              "can run code when loaded; convert them with safetensors first)")
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as handle:
                handle.keys()
        except Exception as err:  # safetensors' SafetensorError derives from Exception only
            raise CheckpointError(f"weights file {str(f)!r} is truncated or corrupt ({_one_line(err, 120)}); "
                                  "allowed: a complete .safetensors file (download or save it again)") from None
    return files


def _local_weight_keys(path: str) -> set[str] | None:
    """Every tensor name of a local checkpoint (the index's weight map, else the files' headers); None for a hub id."""
    from safetensors import safe_open

    root = Path(path)
    if not root.is_dir():
        return None
    index = root / "model.safetensors.index.json"
    if index.exists():
        return set(json.loads(index.read_text()).get("weight_map", {}))
    keys: set[str] = set()
    for f in root.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as handle:
            keys.update(handle.keys())
    return keys


DRAFTER_KINDS = ("mtp", "medusa", "draft", "ngram")


class CheckpointError(UserError):
    """Weights that cannot be used: a truncated or corrupt file, a checkpoint without its MTP tensors, heads or a
    draft model made for another target (hidden size / vocabulary). One line: what and where, what is allowed."""


class DrafterSpecError(UserError):
    """A ``drafter=`` that names no known kind of drafter (one line, with a did-you-mean)."""


def parse_drafter_spec(spec: str) -> tuple[str, str]:
    """``"mtp"`` | ``"mtp:int8"`` | ``"medusa"`` | ``"medusa:<dir>"`` | ``"draft"`` | ``"draft:<path or hub id>"`` |
    ``"ngram"`` -> (kind, argument). ``medusa`` / ``draft`` without an argument mean the heads / draft model shipped
    with (or saved beside) the target; ``mtp:int8`` the MTP layers run in int8 (``drafters.mtp``).

    Example:
        >>> parse_drafter_spec("draft:runs/draft_model")
        ('draft', 'runs/draft_model')
    """
    import difflib

    kind, _, arg = str(spec).partition(":")
    if kind not in DRAFTER_KINDS:
        close = difflib.get_close_matches(kind, DRAFTER_KINDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ";"
        raise DrafterSpecError(f"unknown drafter {spec!r}{hint} allowed: mtp[:int8], medusa[:<dir>], "
                               "draft[:<path or id>], ngram")
    if arg and kind == "ngram":
        raise DrafterSpecError(f"drafter {spec!r}: ngram takes no argument; allowed: ngram")
    if arg and kind == "mtp" and arg != "int8":
        raise DrafterSpecError(f"drafter {spec!r}: unknown MTP drafter variant {arg!r}; allowed: mtp, mtp:int8")
    return kind, arg


def _mtp_patterns(target, keys: set[str] | None, name_or_path: str) -> list[str]:
    """The key patterns of the checkpoint's MTP tensors, for ``MtpModel.from_pretrained``.

    The architecture's registered patterns (``_keys_to_ignore_on_load_unexpected``: deepseek_v3 ``model.layers.61``,
    glm4_moe ``model.layers.46/92``, inkling ``model.mtp.``, mellum ``^mtp.``, ...) are hard-coded to the released
    layer counts, so the DeepSeek layout ``model.layers.{L+k}.`` of this config is always added (sarvam_*, our own
    checkpoints, a deepseek_v3 with another L). A local checkpoint where none of them matches a tensor has no MTP
    layers: ``CheckpointError`` rather than layers left at their random initialisation.
    """
    text_cfg = target.config.get_text_config()
    L, k = text_cfg.num_hidden_layers, text_cfg.num_mtp_layers
    registered = [p for p in (target._keys_to_ignore_on_load_unexpected or [])
                  if not ((m := re.search(r"\.(\d+)", p)) and int(m.group(1)) < L)]  # transformers' own filter
    patterns = list(dict.fromkeys([*registered, *_mtp_key_patterns(L, k)]))
    if keys is not None:
        regex = re.compile("|".join(f"({p})" for p in patterns))
        if not any(regex.search(key) for key in keys):
            raise CheckpointError(
                f"checkpoint {name_or_path!r} has num_mtp_layers={k} in its config but no MTP tensors (no key "
                f"matches {', '.join(p.replace(chr(92), '') for p in patterns)}); allowed: a checkpoint saved with "
                "its MTP layers, or drafter=ngram, medusa or draft:<path>")
    return patterns


def _load_mtp(target, path: str, arg: str, device, dtype, dmap, name_or_path: str):
    """The MTP layers of the checkpoint (transformers' ``MtpModel.from_pretrained``), every weight from the file.

    transformers raises if an MTP weight is missing; that, and an architecture whose MTP layers transformers cannot
    build from this config, become one-line ``CheckpointError``s.
    """
    import transformers
    from transformers.modeling_layers import MtpModel

    text_cfg = target.config.get_text_config()
    k = getattr(text_cfg, "num_mtp_layers", None)
    if not k:
        raise ModelNotFoundError(f"model {name_or_path!r} has no MTP layers (config.num_mtp_layers is unset); "
                                 "allowed: drafter=medusa, draft:<path> or ngram for a model without them")
    target._keys_to_ignore_on_load_unexpected = _mtp_patterns(target, _local_weight_keys(path), name_or_path)
    model_type = getattr(text_cfg, "model_type", type(target).__name__)
    head = target.get_output_embeddings().weight.device  # with device_map="auto": the MTP layers go beside the head
    try:
        mtp = MtpModel.from_pretrained(target, device_map={"": head} if dmap == "auto" else dmap)
    except RuntimeError as err:  # "The following MtpModel weights are missing from ...: [...]", or a shape clash
        if "are missing" not in str(err):
            raise CheckpointError(f"the MTP weights of {name_or_path!r} do not fit its config ({_one_line(err, 160)}); "
                                  "allowed: a checkpoint whose MTP tensors match config.json") from None
        missing = re.findall(r"'([^']+)'", str(err).rsplit(":", 1)[-1])
        raise CheckpointError(
            f"checkpoint {name_or_path!r} lacks {len(missing) or 'some'} MTP weight(s) of its num_mtp_layers={k} "
            f"({', '.join(missing[:2]) or _one_line(err, 160)}); allowed: a checkpoint with all its MTP layers, or "
            "drafter=ngram") from None
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        fix = "mtp_layer_types / mtp_mlp_layer_types in config.json, or " if "mtp_" in str(err) else ""
        raise CheckpointError(
            f"transformers {transformers.__version__} cannot build the MTP layers of {model_type} from "
            f"{name_or_path!r} ({_one_line(err, 160)}); allowed: {fix}drafter=ngram, medusa or draft:<path>") from None
    return mtp.to(head if dmap == "auto" else device).to(dtype).eval()


def _load_drafter(kind: str, target, tokenizer, path: str, arg: str, device, dtype, dmap, name_or_path: str):
    if kind == "mtp":
        return _load_mtp(target, path, arg, device, dtype, dmap, name_or_path)
    if kind == "medusa":
        from .medusa import load_medusa_heads

        return load_medusa_heads(target, path, arg, device, dtype)
    if kind == "draft":
        from .draft_model import load_draft_model

        return load_draft_model(target, tokenizer, path, arg, device, dtype)
    return None  # ngram: model-free


def _load_target(path: str, name_or_path: str, dtype, dmap, trust_remote_code: bool):
    """The target causal LM: safetensors only, remote code only if asked; failures are one-line ``CheckpointError``s.

    A local checkpoint's weights are checked first (``_check_local_weights``); then transformers' own errors (remote
    code refused, an architecture it has no causal LM class for, a hub id without safetensors) keep their first line.
    """
    import transformers
    from transformers import AutoModelForCausalLM

    if Path(path).is_dir():
        _check_local_weights(path)
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=dmap, use_safetensors=True,
                                                    trust_remote_code=trust_remote_code)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        full = str(err)
        if "trust_remote_code" in full or "custom code" in full:
            message = ("ships its own Python code (config.json auto_map), which is not run by default; allowed: "
                       "load_model(..., trust_remote_code=True) if you trust it, or an architecture transformers "
                       "supports natively")
        elif "Unrecognized configuration class" in full:
            kind = re.search(r"configuration_(\w+)\.", full)
            message = (f"has model_type {kind.group(1) if kind else '?'!r}, for which transformers "
                       f"{transformers.__version__} has no causal LM class (AutoModelForCausalLM cannot load it); "
                       "allowed: a text causal LM checkpoint (deepseek_v3, glm4_moe, mellum, ...)")
        else:
            message = (f"could not be loaded ({_one_line(err)}); allowed: a transformers checkpoint with config.json "
                       "and complete *.safetensors weights")
        raise CheckpointError(f"model {name_or_path!r} {message}") from None


def _device_map(device: torch.device):
    """``device_map`` for ``from_pretrained``: none on CPU or without accelerate (load, then move); ``"auto"`` on an
    accelerator (accelerate places the layers, over several GPUs if needed); an explicit index pins that device."""
    if device.type == "cpu" or not _has_accelerate():
        return None
    return {"": device} if device.index is not None else "auto"


def load_model(name_or_path: str = "tiny", device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None,
               drafter: str = "mtp", trust_remote_code: bool = False):
    """Load target + drafter + tokenizer.

    ``name_or_path``: ``"tiny"`` (embedded), a local checkpoint directory or a hub id. ``drafter``: ``"mtp"`` (the
    checkpoint's MTP layers: its config has ``num_mtp_layers``, DeepSeek-V3, GLM-4.5, ...), ``"medusa"`` /
    ``"medusa:<dir>"`` (Medusa heads), ``"draft"`` / ``"draft:<path or id>"`` (a separate draft model sharing the
    tokenizer) or ``"ngram"`` (prompt lookup, model-free); see ``parse_drafter_spec``. ``dtype`` defaults to float32
    on CPU and bfloat16 on CUDA. Weights are read from safetensors only; code shipped with a checkpoint runs only with
    ``trust_remote_code=True``. A checkpoint that cannot be used (no or corrupt weights, MTP tensors missing, an
    architecture transformers cannot load) raises a one-line ``CheckpointError`` / ``ModelNotFoundError``.

    >>> model = load_model("tiny"); model.target, model.drafter.layers[0], model.tokenizer
    >>> load_model("tiny", drafter="ngram").drafter_name
    'ngram'
    """
    from transformers import AutoTokenizer

    kind, arg = parse_drafter_spec(drafter)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    path = resolve_model_path(name_or_path)
    with _quiet_transformers():
        dmap = _device_map(device)
        target = _load_target(path, name_or_path, dtype, dmap, trust_remote_code)
        target = (target if dmap == "auto" else target.to(device)).eval()
        local = Path(path).exists()
        has_tok = not local or any((Path(path) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code) if has_tok else None
        module = _load_drafter(kind, target, tokenizer, path, arg, device, dtype, dmap, name_or_path)
    card_path = Path(path) / "model_card.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    name = name_or_path if name_or_path in EMBEDDED else Path(path).name
    return MTPModel(target, module, tokenizer, name=name, card=card, drafter_name=kind, drafter_arg=arg)
