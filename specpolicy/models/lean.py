"""The lean forward: Llama-family decoder layers as plain tensor code over the model's own weights, with a static KV
cache whose crop is an integer assignment. Same operations, in the same order and on the same shapes, as
transformers 5.24's ``LlamaModel`` / ``MtpLayer`` with SDPA attention, so its hidden states are bit-identical to
theirs (checked in tests/models/test_lean.py for float64 and float32, grouped-query and not, prefill, single
tokens and blocks after a cache). What it removes is everything that is not model compute: ~15 module calls,
kwargs plumbing and output dataclasses per layer, the mask factory, ``DynamicCache``'s ``torch.cat`` per layer and
its crop.

Only what is checked is taken: ``lean_unsupported`` names the first feature a model has that this code does not
reproduce (another architecture, eager/flash attention, RoPE scaling, biases, another activation...), and the decoder
falls back to the transformers modules for it.

``packed=True`` (``engine="packed"`` in ``generate``) is the same code with every projection and the LM head as oneDNN
matmuls over weights packed once (q/k/v and gate/up fused into one matrix each; CPU float32 only, ``packed_unsupported``
says why not). MKL, which ``F.linear`` calls, has no fast kernel for 2-5 rows: on the embedded model a block of 4 costs
~1.5 one-token forwards, about as much as one with the packed weights. Its results differ from transformers' in the last
bits (another summation order), so this engine is opt-in: its greedy outputs can leave ``generate()``'s at numerical
near-ties, the float32 class README "What lossless means" describes for blocks.

``int8=True`` (MTP layers only: a drafter's weights, never the target's) is the packed layout with every projection
and the head as PyTorch's dynamic int8 linear (fbgemm: weights quantized once per output channel, activations per
call; ``int8_unsupported`` says where it cannot run). A draft then reads a quarter of the weight bytes; its logits
differ from float32's by ~1e-2, so its drafts and confidences are those of another drafter (``mtp-int8``), while the
output, which the target verifies, stays lossless.

Example:
    >>> target = LeanTarget(model.target)            # a LlamaForCausalLM
    >>> h = target.forward(ids[:, :P])               # prefill: [1, P, H]
    >>> h = target.forward(block); target.crop(n)    # a block [1, m] after the cache; keep n cache entries
"""

from __future__ import annotations

import warnings
import weakref
from functools import partial

import torch
import torch.nn.functional as F

from .mtp import mtp_logits

__all__ = ["LeanKV", "LeanLayer", "LeanMTPLayer", "LeanTarget", "int8_unsupported", "lean_unsupported",
           "packed_unsupported"]


def lean_unsupported(config, what: str = "target") -> str | None:
    """Why the lean forward cannot reproduce a model with ``config`` bit for bit, or None if it can."""
    checks = (
        (getattr(config, "model_type", None) == "llama", f"model_type {getattr(config, 'model_type', None)!r}"),
        (getattr(config, "_attn_implementation", None) == "sdpa",
         f"attention {getattr(config, '_attn_implementation', None)!r}"),
        ((getattr(config, "rope_parameters", None) or {}).get("rope_type", "default") == "default", "RoPE scaling"),
        (not getattr(config, "attention_bias", False) and not getattr(config, "mlp_bias", False), "biases"),
        (getattr(config, "hidden_act", None) == "silu", f"activation {getattr(config, 'hidden_act', None)!r}"),
        (getattr(config, "pretraining_tp", 1) == 1, "pretraining_tp"),
    )
    if what == "mtp":
        checks += (
            (not getattr(config, "mtp_hidden_states_first", False), "mtp_hidden_states_first"),
            (not getattr(config, "is_heterogeneous", False), "heterogeneous MTP layers"),
            (getattr(config, "layer_types", None) is None, "MTP layer types"),
        )
    for ok, feature in checks:
        if not ok:
            return feature
    return None


def packed_unsupported(weight: torch.Tensor) -> str | None:
    """Why the packed projections cannot run on a model whose weights are like ``weight``, or None if they can."""
    if weight.device.type != "cpu":
        return f"device {weight.device.type!r} (the packed engine is oneDNN on CPU)"
    if weight.dtype != torch.float32:
        return f"dtype {weight.dtype} (the packed engine is float32)"
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (torch.backends.mkldnn)"
    return None


def int8_unsupported(weight: torch.Tensor) -> str | None:
    """Why the int8 projections (``int8=True``) cannot run on weights like ``weight``, or None if they can."""
    if weight.device.type != "cpu":
        return f"device {weight.device.type!r} (the int8 drafter runs PyTorch's fbgemm kernels on CPU)"
    if weight.dtype != torch.float32:
        return f"dtype {weight.dtype} (the int8 drafter quantizes float32 weights)"
    engines = torch.backends.quantized.supported_engines
    if ("fbgemm" not in engines and "x86" not in engines) or not hasattr(torch.ops.quantized, "linear_dynamic"):
        return f"this torch build has no fbgemm int8 linear (quantized engines: {', '.join(engines)})"
    return None


def _int8_weight(w: torch.Tensor):
    """fbgemm's prepacked int8 weight of ``w`` [out, in]: symmetric, one scale per output row (absmax / 127)."""
    scale = (w.abs().amax(1) / 127).clamp_min(1e-12).double()
    with warnings.catch_warnings():  # PyTorch marks quantized tensors deprecated; the int8 kernels have no other door
        warnings.simplefilter("ignore")
        q = torch.quantize_per_channel(w, scale, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(q, None)


_PACKED: dict[tuple, tuple] = {}  # (id(first weight), int8) -> (key of the weight set, packed); dropped with the weight


def _pack(*ws: torch.Tensor, int8: bool = False):
    """The oneDNN-packed weight of ``ws`` stacked by rows (``int8``: fbgemm's int8 one), packed once per weight set
    (packed again after an in-place change of any of them: tensor versions are part of the key; an inference tensor
    has none, and is packed once). Kept beside the model, not on it, so the model still pickles and saves as before."""
    first = (id(ws[0]), int8)
    key = tuple((id(w), -1 if w.is_inference() else w._version) for w in ws)
    hit = _PACKED.get(first)
    if hit is None or hit[0] != key:
        with torch.inference_mode():
            w = torch.cat(ws) if len(ws) > 1 else ws[0].detach()
            hit = (key, _int8_weight(w) if int8 else torch.ops.mkldnn._reorder_linear_weight(w, 4))
        if first not in _PACKED:
            weakref.finalize(ws[0], _PACKED.pop, first, None)
        _PACKED[first] = hit
    return hit[1]


def _packed_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


def _int8_linear(x: torch.Tensor, w) -> torch.Tensor:
    return torch.ops.quantized.linear_dynamic(x, w, True)  # reduce_range, as torch's dynamic Linear on fbgemm/x86


class _Head:
    """The LM head ``lm.get_output_embeddings()``: the module itself, or with ``packed`` its weight packed (``int8``:
    as int8) (a bias-free ``nn.Linear``; any other head runs as the module)."""

    def __init__(self, module, packed: bool, int8: bool = False):
        self.module = module
        plain = isinstance(module, torch.nn.Linear) and module.bias is None
        self.w = _pack(module.weight, int8=int8) if (packed or int8) and plain else None
        self.mm = _int8_linear if int8 else _packed_linear

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        return self.module(h) if self.w is None else self.mm(h, self.w)


class LeanKV:
    """Static KV cache of ``layers`` layers: keys/values [L, 1, H_kv, T, D]; ``n`` entries are valid. Grows by
    doubling when a block would not fit; ``crop(n)`` keeps the first n entries."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device, capacity: int = 256):
        self.k = torch.zeros(layers, 1, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.n = 0

    def reserve(self, n: int) -> None:
        cap = self.k.shape[3]
        if n > cap:
            size = max(n, 2 * cap)
            k = self.k.new_zeros(*self.k.shape[:3], size, self.k.shape[4])
            v = torch.zeros_like(k)
            k[:, :, :, : self.n], v[:, :, :, : self.n] = self.k[:, :, :, : self.n], self.v[:, :, :, : self.n]
            self.k, self.v = k, v

    def crop(self, n: int) -> None:
        self.n = min(self.n, n)


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm, operation for operation (in float32, torch's own rms_norm: on CPU a C++ composite of the same
    operations, so the same bits in one call instead of eight)."""
    dtype = x.dtype
    if dtype == torch.float32 and w.dtype == torch.float32 and x.device.type == "cpu":
        return F.rms_norm(x, (x.shape[-1],), w, eps)
    x = x.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return w * x.to(dtype)


class _Rope:
    """cos/sin of RoPE for positions [1, m], as LlamaRotaryEmbedding computes them (float32, then the model dtype)."""

    def __init__(self, rotary, dtype: torch.dtype):
        self.inv_freq, self.scale, self.dtype = rotary.inv_freq.float(), rotary.attention_scaling, dtype

    def __call__(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = pos[..., None].float() * self.inv_freq  # [1, m, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [1, m, D]
        return ((emb.cos() * self.scale).to(self.dtype)[:, None],  # [1, 1, m, D]
                (emb.sin() * self.scale).to(self.dtype)[:, None])


def _mask(m: int, n0: int, device) -> torch.Tensor | None:
    """The boolean mask SDPA gets from transformers for a block of m queries after n0 cached entries (None where
    transformers passes none: a single query, or a prefill, which uses is_causal)."""
    if m == 1 or n0 == 0:
        return None
    return torch.ones(m, n0 + m, dtype=torch.bool, device=device).tril(n0)[None, None]  # [1, 1, m, n0+m]


class LeanLayer:
    """One LlamaDecoderLayer as tensor code over its weights (pre-norm attention + SwiGLU MLP, residuals);
    ``packed``: the projections as packed oneDNN matmuls; ``int8``: as fbgemm int8 ones (module docstring)."""

    def __init__(self, layer, config, packed: bool = False, int8: bool = False):
        a, mlp = layer.self_attn, layer.mlp
        self.w = (layer.input_layernorm.weight, a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, a.o_proj.weight,
                  layer.post_attention_layernorm.weight, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)
        self.eps = (layer.input_layernorm.variance_epsilon, layer.post_attention_layernorm.variance_epsilon)
        self.head_dim, self.scaling = a.head_dim, a.scaling
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.packed, self.mm = None, _int8_linear if int8 else _packed_linear
        if packed or int8:
            _, wq, wk, wv, wo, _, wg, wu, wd = self.w
            self.packed = tuple(_pack(*ws, int8=int8) for ws in ((wq, wk, wv), (wo,), (wg, wu), (wd,)))
            self.split = (wq.shape[0], wk.shape[0], wv.shape[0]), wg.shape[0]

    def _out(self, o: torch.Tensor) -> torch.Tensor:
        return F.linear(o, self.w[4]) if self.packed is None else self.mm(o, self.packed[1])

    def _mlp(self, h: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return F.linear(F.silu(F.linear(h, self.w[6])) * F.linear(h, self.w[7]), self.w[8])
        g, u = self.mm(h, self.packed[2]).split(self.split[1], dim=-1)
        return self.mm(F.silu(g) * u, self.packed[3])

    def __call__(self, x: torch.Tensor, cos, sin, kv: LeanKV, i: int, mask) -> torch.Tensor:
        """x [1, m, H] -> [1, m, H]; writes this block's keys/values at kv entries n..n+m of layer i."""
        m, n0, D, half = x.shape[1], kv.n, self.head_dim, self.head_dim // 2
        shape = (1, m, -1, D)
        h = _rms(x, self.w[0], self.eps[0])
        if self.packed is None:
            q, k, v = F.linear(h, self.w[1]), F.linear(h, self.w[2]), F.linear(h, self.w[3])
            q = q.reshape(shape).transpose(1, 2)  # [1, heads, m, D]
            k = k.reshape(shape).transpose(1, 2)  # [1, kv_heads, m, D]
            v = v.reshape(shape).transpose(1, 2)
            q = q * cos + torch.cat((-q[..., half:], q[..., :half]), dim=-1) * sin
            k = k * cos + torch.cat((-k[..., half:], k[..., :half]), dim=-1) * sin
        else:  # the fused q/k/v output: RoPE on the q and k heads in one pass (the same elementwise operations)
            qkv = self.mm(h, self.packed[0]).view(shape).transpose(1, 2)  # [1, heads + 2 kv_heads, m, D]
            nq, nqk = self.heads, self.heads + self.kv_heads
            qk = qkv[:, :nqk]
            qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin
            q, k, v = qk[:, :nq], qk[:, nq:], qkv[:, nqk:]
        n1 = n0 + m
        kv.k[i, :, :, n0:n1], kv.v[i, :, :, n0:n1] = k, v
        keys, values = kv.k[i, :, :, :n1], kv.v[i, :, :, :n1]  # [1, kv_heads, n1, D]
        # transformers passes a boolean mask for a block after a cache and repeats the kv heads first (repeat_kv);
        # SDPA's own GQA gives the same bits on CPU (tests/models/test_lean.py) without copying the cache per layer
        o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scaling,
                                           is_causal=mask is None and m > 1, enable_gqa=self.heads != self.kv_heads)
        o = o.transpose(1, 2).reshape(1, m, -1)  # [1, m, heads*D]
        x = x + self._out(o)
        return x + self._mlp(_rms(x, self.w[5], self.eps[1]))


class LeanTarget:
    """The target's decoder (``lm.get_decoder()``) with a static cache: ``forward`` appends a block, ``crop`` keeps a
    prefix. Returns final hidden states; ``logits`` applies the LM head (the model's own module, or its packed weight
    with ``packed``)."""

    def __init__(self, lm, packed: bool = False):
        body, cfg = lm.get_decoder(), lm.config
        self.embed = body.embed_tokens.weight
        self.layers = [LeanLayer(layer, cfg, packed) for layer in body.layers]
        self.logits = _Head(lm.get_output_embeddings(), packed)
        self.norm = (body.norm.weight, body.norm.variance_epsilon)
        self.rope = _Rope(body.rotary_emb, self.embed.dtype)
        a = body.layers[0].self_attn
        self.kv = LeanKV(len(self.layers), cfg.num_key_value_heads, a.head_dim, self.embed.dtype, self.embed.device)

    def reset(self) -> None:
        self.kv.n = 0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [1, m] at positions n..n+m-1 -> final hidden states [1, m, H]."""
        m, n0 = ids.shape[1], self.kv.n
        self.kv.reserve(n0 + m)
        cos, sin = self.rope(torch.arange(n0, n0 + m, device=ids.device)[None])
        mask = _mask(m, n0, ids.device)
        x = F.embedding(ids, self.embed)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, self.kv, i, mask)
        self.kv.n = n0 + m
        return _rms(x, *self.norm)

    def crop(self, n: int) -> None:
        self.kv.crop(n)


class LeanMTPLayer:
    """``MtpModel.forward_layer`` for one MTP layer with a cache of its own (one per draft depth):
    eh_proj([enorm(emb(t)), hnorm(h)]) -> decoder layer -> post-norm (or the shared post-norm); ``packed`` / ``int8``:
    the projections and the head packed, or in int8 (module docstring)."""

    def __init__(self, mtp, layer_idx: int, packed: bool = False, int8: bool = False):
        layer, cfg = mtp.layers[layer_idx], mtp.config
        self.embed = mtp.embed_tokens.weight
        self.enorm = (layer.enorm.weight, layer.enorm.variance_epsilon)
        self.hnorm = (layer.hnorm.weight, layer.hnorm.variance_epsilon)
        self.eh = layer.eh_proj.weight
        self.eh_packed = _pack(self.eh, int8=int8) if packed or int8 else None
        self.mm = _int8_linear if int8 else _packed_linear
        self.block = LeanLayer(layer.mtp_block, cfg, packed, int8)
        plain_head = all(getattr(cfg, a, None) is None for a in ("logits_mup_width_multiplier", "unpadded_vocab_size"))
        self.logits = _Head(mtp.shared_head, True, int8) if (packed or int8) and plain_head else partial(mtp_logits, mtp)
        post = layer.post_norm if layer.use_post_norm else (mtp.shared_post_norm if mtp.use_shared_post_norm else None)
        self.post = None if post is None else (post.weight, post.variance_epsilon)
        self.rope = _Rope(mtp.rotary_emb, self.embed.dtype)
        self.kv = LeanKV(1, cfg.num_key_value_heads, self.block.head_dim, self.embed.dtype, self.embed.device)

    def forward(self, h_prev: torch.Tensor, pos: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """h_prev [1, m, H], RoPE positions [1, m], input ids [1, m] -> [1, m, H], appended to this layer's cache."""
        m, n0 = input_ids.shape[1], self.kv.n
        self.kv.reserve(n0 + m)
        e = F.embedding(input_ids, self.embed)
        x = torch.cat([_rms(e, *self.enorm), _rms(h_prev, *self.hnorm)], dim=-1)
        x = F.linear(x, self.eh) if self.eh_packed is None else self.mm(x, self.eh_packed)
        cos, sin = self.rope(pos)
        x = self.block(x, cos, sin, self.kv, 0, _mask(m, n0, input_ids.device))
        self.kv.n = n0 + m
        return x if self.post is None else _rms(x, *self.post)

    def crop(self, n: int) -> None:
        self.kv.crop(n)
