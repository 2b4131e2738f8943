"""The MTP drafter (DeepSeek-V3 style): one KV cache and one hidden-state history per draft depth, kept valid across
steps.

Depth j at index i reads ``emb(t_{i+j})`` and ``h^{j-1}_i`` (``h^0`` = target final hidden state) and predicts
``t_{i+j+1}`` (see ``specpolicy.models.mtp``). With the last committed token at index n, the frontier index is
``f = n - 1``; drafting depth j first processes the pending indices ``[L_j, f]`` in one call (catch-up after
accepted tokens, or after the policy stopped short of this depth), then reads d_j off the last row.

After a step commits up to index n', an entry (j, i) stays valid iff every token it read is committed: i + j <= n'-1.
So ``crop(n')`` keeps ``min(L_j, n' - j)`` entries per depth. Depths past the K MTP layers re-use the last layer's
weights with a cache of their own, exactly as the model was trained. Each depth runs through the lean forward where
it reproduces the layer bit for bit (``decoding.engine.mtp_layer_forward``), else through ``mtp.forward_layer``.

``int8=True`` (``load_model(..., drafter="mtp:int8")``) runs every depth with int8 projections and head
(``models.lean``: a quarter of the weight bytes a draft reads on a CPU, where a draft costs about its bytes). Its
drafts and confidences are another drafter's, named ``mtp-int8`` in traces and calibrators; the output, verified by
the target, is lossless as with any drafter.

Example:
    >>> res = generate(model, "def f(", "fixed", k=3, drafter=MTPDrafter(model.drafter))   # the default drafter
    >>> MTPDrafter(model.drafter, int8=True).name
    'mtp-int8'
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from ...models.mtp import drafter_label, layer_for_depth, mtp_logits
from ..engine import mtp_layer_forward

__all__ = ["CatchUp", "MTPDrafter"]


class CatchUp:
    """How many rows (pending indices) the MTP drafter's calls process, step by step, from the steps alone: the same
    bookkeeping as ``MTPDrafter`` without its tensors, for the cost model and the replay (a draft that catches up r
    rows costs more than one of a single row: ``CostModel.t_row``, and ``t_ctx`` for a depth's first draft).

    Drafting depth j with t_n the last committed token processes the indices ``L_j .. n-1`` (n - L_j rows; the first
    draft at a depth in a generation reads the whole context), then L_j = n; committing up to n' keeps
    ``min(L_j, n' - j)`` entries, as ``MTPDrafter.crop`` does. After each ``step``, ``fresh`` holds the rows beyond
    one per draft of that step's drafts at depths drafted for the first time (whole-context reads).

    Example:
        >>> cu = CatchUp(64)                    # the prompt is tokens 0..63; t_64 is the prefill's token
        >>> cu.step(drafted=2, committed=3), cu.fresh   # depths 1 and 2 read the 64 prompt positions; both accepted
        (128, 126)
        >>> cu.step(drafted=2, committed=1), cu.fresh   # each depth catches up the 3 tokens committed last step
        (6, 0)
    """

    __slots__ = ("_L", "_last", "fresh", "n")

    def __init__(self, n: int) -> None:
        self.n, self.fresh = n, 0  # n: index of the last committed token
        self._L: list[int] = []  # [j-1]: entries of depth j, except those the last step set (``_last``)
        self._last: tuple[int, int, int] | None = None  # (drafted, n, committed) of the last step that drafted

    @property
    def L(self) -> list[int]:
        """``[j-1]``: the entries depth j holds."""
        if self._last is not None:
            self._hold(0)
        return self._L

    def _hold(self, lo: int) -> None:
        """Write the last step's entries of depths lo+1..drafted into ``_L``: depth j (0-based) holds
        min(n, n + committed - 1 - j)."""
        d0, n0, c0 = self._last
        if c0 >= d0:
            self._L[lo:d0] = [n0] * (d0 - lo)
        else:
            a = lo if lo > c0 else c0
            self._L[lo:d0] = [n0] * (a - lo) + [*range(n0 + c0 - 1 - a, n0 + c0 - 1 - d0, -1)]
        self._last = None

    def step(self, drafted: int, committed: int) -> int:
        """Rows processed by the ``drafted`` drafts of a step that commits ``committed`` tokens; advances to the next.

        The entries the last step set are kept as that step's (drafted, n, committed), written out only when a
        later step drafts fewer depths or one of them may be empty (tiny contexts); the depths both steps draft
        catch up, in closed form, (n - n_last) + max(0, j + 1 - committed_last) rows each (0-based j)."""
        n = self.n
        self.n = n + committed
        if not drafted:
            self.fresh = 0
            return 0
        last, L = self._last, self._L
        if last is not None and last[1] > 0 and last[1] + last[2] > last[0]:  # its entries are >= 1: none is empty
            d0, n0, c0 = last
            lo = drafted if drafted < d0 else d0
            e = lo - c0
            rows = lo * (n - n0) + (e * (e + 1) >> 1 if e > 0 else 0)
            if drafted <= d0:
                self.fresh = 0
                if drafted < d0:
                    self._hold(drafted)  # depths past this step's keep the last step's entries
            else:  # deeper than the last step: depths d0.. read their own entries (none yet: the whole context)
                if len(L) < drafted:
                    L += [0] * (drafted - len(L))
                tail = L[d0:drafted]
                self.fresh = tail.count(0) * (n - 1)
                rows += (drafted - d0) * n - sum(tail)
        else:
            if last is not None:
                self._hold(0)
            if len(L) < drafted:
                L += [0] * (drafted - len(L))
            head = L[:drafted]
            self.fresh = head.count(0) * (n - 1) if n > 0 else 0  # depths with no entry yet read the whole context
            rows = drafted * n - sum(head)
        # each drafted depth j (0-based) now holds min(n, n + committed - 1 - j) entries: n for j < committed, then
        # one fewer per depth; depths not drafted this step keep entries that read committed tokens only
        self._last = (drafted, n, committed)
        return rows


class _Rows:
    """A growable [1, n, H] history of hidden states: appends write into a buffer that doubles when full (no
    ``torch.cat`` of the whole history per step), ``crop(n)`` keeps the first n rows."""

    __slots__ = ("buf", "n")

    def __init__(self, first: torch.Tensor) -> None:
        self.buf, self.n = first.new_empty(1, max(2 * first.shape[1], 256), first.shape[2]), 0
        self.append(first)

    def append(self, x: torch.Tensor) -> None:
        n1 = self.n + x.shape[1]
        if n1 > self.buf.shape[1]:
            buf = self.buf.new_empty(1, max(n1, 2 * self.buf.shape[1]), self.buf.shape[2])
            buf[:, : self.n] = self.buf[:, : self.n]
            self.buf = buf
        self.buf[:, self.n : n1] = x
        self.n = n1

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        return self.buf[:, lo:hi]

    def crop(self, n: int) -> None:
        self.n = min(self.n, n)


class MTPDrafter:
    """The ``Drafter`` of a transformers ``MtpModel``: per-depth caches, cropped to the committed prefix."""

    def __init__(self, mtp, engine: str = "auto", int8: bool = False) -> None:
        self.mtp, self.engine, self.int8 = mtp, engine, int8
        self.name = drafter_label("mtp", "int8" if int8 else "")
        self.block_invariant = not int8  # int8: activations quantized per call, so a row's draft depends on the block
        self.native_depths = len(mtp.layers)
        self.caches: list = []  # depth j -> caches[j-1]: a lean layer with its cache, or a DynamicCache
        self.hist: list[_Rows | None] = [None]  # hist[j]: the L_j outputs of depth j; hist[0] = h^0

    def begin(self, tokens: torch.Tensor, n: int, hidden: torch.Tensor) -> None:
        self.caches, self.hist = [], [_Rows(hidden)]

    def advance(self, hidden: torch.Tensor) -> None:
        """Append target final hidden states [1, m+1, H] of the verified block."""
        self.hist[0].append(hidden)

    def length(self, depth: int) -> int:
        h = self.hist[depth] if depth < len(self.hist) else None
        return 0 if h is None else h.n

    def draft(self, depth: int, tokens: torch.Tensor, n: int) -> torch.Tensor:
        """Logits [V] of d_depth. tokens: [1, >= n + depth] committed t_0..t_n followed by d_1..d_{depth-1}."""
        frontier = n - 1
        while len(self.caches) < depth:
            layer = layer_for_depth(len(self.caches) + 1, self.native_depths)
            lean = mtp_layer_forward(self.mtp, layer, self.engine, self.int8)
            self.caches.append(lean if lean is not None else DynamicCache(config=self.mtp.config))
            self.hist.append(None)
        lo = self.length(depth)  # pending indices lo..frontier
        h_prev = self.hist[depth - 1].rows(lo, frontier + 1)  # [1, n, H]
        pos = torch.arange(lo + depth, frontier + depth + 1, device=tokens.device)[None]  # RoPE positions i + j
        ids, cache = tokens[:, lo + depth : frontier + depth + 1], self.caches[depth - 1]
        if isinstance(cache, DynamicCache):
            h = self.mtp.forward_layer(layer_for_depth(depth, self.native_depths), h_prev, pos, cache, input_ids=ids)
        else:
            h = cache.forward(h_prev, pos, ids)
        if self.hist[depth] is None:
            self.hist[depth] = _Rows(h)
        else:
            self.hist[depth].append(h)
        return (mtp_logits(self.mtp, h[:, -1]) if isinstance(cache, DynamicCache) else cache.logits(h[:, -1]))[0]

    def crop(self, n: int) -> None:
        """Drop every entry that read a token past the committed prefix (last committed index n)."""
        if self.hist[0] is not None:
            self.hist[0].crop(n)
        for j in range(1, len(self.hist)):
            length = self.length(j)
            keep = max(0, min(length, n - j))
            if keep < length:
                self.hist[j].crop(keep)
                cache = self.caches[j - 1]
                if isinstance(cache, DynamicCache):
                    cache.crop(keep - length)
                else:
                    cache.crop(keep)
