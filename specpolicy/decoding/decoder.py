"""The decode loop: the only one in the code base. A policy decides, a drafter drafts; this module runs the target.

    prefill -> bonus token t0
    loop: draft phase (policy decides, the drafter drafts d_1.. while it says EXTEND; TRUST(mask)/VERIFY ends it)
          one target forward over [t_n, d_1..d_m]
          walk the drafts (``step.walk``): trusted -> commit; else the strict rule (or a relaxed one); first
          rejection -> the target's correction; all accepted -> the bonus token; nothing after an EOS
          commit, crop the target cache and the drafter to the committed prefix; policy.observe(outcome)

With greedy decoding and no trusted/relaxed token the output equals ``target.generate(do_sample=False)`` (bit for
bit in float64; see README for float32 and half precision). Greedy vs sampling is chosen once per generation (the
judge class); everything the step decides is in ``step`` and shared with the replay.

Example:
    >>> res = generate(model, "def parse(", policy=get_policy("threshold", tau_trust=0.95), max_new_tokens=64)
    >>> res.text, res.stats.tpf, res.provenance[:5]
"""

from __future__ import annotations

import time

import torch

from ..policies import Policy, StepOutcome, StepState, get_policy
from ..policies.base import AcceptanceStats
from .acceptance import draft_features, relaxed_rule, residual, sampling_accept, warp
from .drafters import Drafter, check_drafter, drafter_for
from .engine import DecodeError, causal_forward
from .result import GenerationResult, StepRecord, summarise
from .step import Block, draft_phase, trust_mask, walk


def _check_args(max_new_tokens: int, temperature: float, top_p: float, top_k: int, max_draft: int) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise DecodeError(f"max_new_tokens={max_new_tokens!r} is invalid; allowed: an integer >= 1")
    if not temperature >= 0:  # NaN too
        raise DecodeError(f"temperature={temperature} is invalid; allowed: 0 (greedy) or > 0")
    if not 0 < top_p <= 1:
        raise DecodeError(f"top_p={top_p} is invalid; allowed: 0 < top_p <= 1")
    if top_k < 0:
        raise DecodeError(f"top_k={top_k} is invalid; allowed: 0 (off) or >= 1")
    if max_draft < 0:
        raise DecodeError(f"max_draft={max_draft} is invalid; allowed: >= 0")


def _eos_ids(model) -> frozenset[int]:
    eos = getattr(model.target.generation_config, "eos_token_id", None)
    if eos is None:
        eos = model.eos_token_id
    return frozenset(eos) if isinstance(eos, list | tuple) else (frozenset({eos}) if eos is not None else frozenset())


def _prompt_ids(model, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        if prompt and model.tokenizer is None:
            raise DecodeError("prompt is text but the model has no tokenizer; allowed: a list of token ids")
        ids = model.tokenizer.encode(prompt, add_special_tokens=False) if prompt else []
    else:
        ids = [int(t) for t in prompt]
    if not ids:
        raise DecodeError("prompt is empty; allowed: a non-empty string or list of token ids")
    return ids


@torch.inference_mode()
def generate(
    model,
    prompt: str | list[int],
    policy: str | Policy = "ar",
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    max_draft: int = 16,
    drafter: Drafter | None = None,
    probe=None,
    engine: str = "auto",
    **policy_params,
) -> GenerationResult:
    """Decode ``prompt`` with ``policy`` (a registered name or a ``Policy`` instance).

    temperature=0 is greedy; otherwise speculative sampling with temperature/top-p/top-k applied identically to p and
    q, drawing from a ``torch.Generator`` seeded with ``seed``. ``drafter``: any object implementing the ``Drafter``
    protocol (default: the model's own, ``drafter_for(model)``). ``probe``: a hook called after each draft phase as
    ``probe(state, next_draft)``, which may draft deeper (never verified; trace recording uses it to see the chain
    up to ``probe.depth``); it is not called at all when None. ``engine``: how the target runs (``decoding.engine``):
    "auto" takes the lean forward where it reproduces the model bit for bit (Llama-family with SDPA), transformers'
    modules otherwise; "lean" insists; "transformers" always uses transformers' modules (drafters use their own);
    "packed" is the lean forward with oneDNN-packed projections (CPU float32; faster on blocks, not bit-identical to
    transformers: ``models.lean``).

    >>> res = generate(load_model("tiny"), "import os\\n", "fixed", k=3, max_new_tokens=32)
    """
    _check_args(max_new_tokens, temperature, top_p, top_k, max_draft)
    policy = get_policy(policy, **policy_params) if isinstance(policy, str) else policy
    ids = _prompt_ids(model, prompt)
    drafter = drafter_for(model, engine) if drafter is None else check_drafter(drafter)
    if policy.requires_drafter is not None and policy.requires_drafter != drafter.name:
        raise DecodeError(f"{policy.name} is fitted to drafter {policy.requires_drafter}, not {drafter.name}; allowed: "
                          f"that drafter, or the policy fitted for {drafter.name}")
    judge = _Greedy if temperature == 0 else _Sampling
    loop = _Loop(model, policy, drafter, judge, {"temperature": temperature, "top_p": top_p, "top_k": top_k},
                 seed, max_draft, probe, engine)
    return loop.run(ids, max_new_tokens)


class _Greedy:
    """The strict greedy rule on one block: d_j == argmax p_j; the target's token is the argmax."""

    def __init__(self, loop: _Loop, logits: torch.Tensor, drafts: tuple[int, ...]):
        self.tokens = logits.argmax(-1).tolist()  # the one host sync greedy acceptance needs
        self.loop, self.logits, self.drafts = loop, logits, drafts

    def strict(self, j: int, clean: bool) -> tuple[bool, float]:
        ok = self.drafts[j] == self.tokens[j]
        return ok, float(ok)

    def relaxed(self, j: int) -> bool:
        p = torch.softmax(self.logits[j].float(), -1)
        return self.loop.relaxed.accept(p, torch.tensor(self.drafts[j], device=self.logits.device))

    def target(self, j: int, clean: bool, rejected: bool) -> int:
        return self.tokens[j]


class _Sampling(_Greedy):
    """Speculative sampling on one block: accept d_j w.p. min(1, p/q), else draw from norm(max(0, p - q))."""

    def __init__(self, loop: _Loop, logits: torch.Tensor, drafts: tuple[int, ...]):
        super().__init__(loop, logits, drafts)
        self.probs = warp(logits, **loop.warp_kw)  # [m+1, V]

    def strict(self, j: int, clean: bool) -> tuple[bool, float]:
        loop = self.loop
        u = torch.rand((), generator=loop.gen, device=loop.device)
        ok, ratio = sampling_accept(self.probs[j], loop.qs[j], torch.tensor(self.drafts[j], device=loop.device), u)
        return bool(ok), float(ratio)

    def relaxed(self, j: int) -> bool:
        return self.loop.relaxed.accept(self.probs[j], torch.tensor(self.drafts[j], device=self.loop.device))

    def target(self, j: int, clean: bool, rejected: bool) -> int:
        dist = residual(self.probs[j], self.loop.qs[j]) if rejected else self.probs[j]
        return int(torch.multinomial(dist, 1, generator=self.loop.gen)[0])


class _Loop:
    """One generation: the token buffer, the target's KV cache, the drafter, what has been committed."""

    def __init__(self, model, policy: Policy, drafter: Drafter, judge: type[_Greedy], warp_kw: dict,
                 seed: int | None, max_draft: int, probe, engine: str):
        self.model, self.policy, self.drafter, self.judge = model, policy, drafter, judge
        self.relaxed = relaxed_rule(policy.acceptance)
        self.sample, self.warp_kw = judge is _Sampling, warp_kw
        self.device = model.device
        self.gen = torch.Generator(self.device)
        self.gen.manual_seed(seed if seed is not None else 0)
        self.max_draft, self.probe = max_draft, probe
        self.engine = engine
        self.eos = _eos_ids(model)
        self.sync = self.device.type == "cuda"

    def clock(self) -> float:
        """The wall clock, read after the device has finished what was queued (CUDA is asynchronous)."""
        if self.sync:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def run(self, prompt_ids: list[int], max_new: int) -> GenerationResult:
        t_start = self.clock()
        self.prefill(prompt_ids, max_new)
        prefill_s = self.clock() - t_start
        while len(self.new) < max_new and not self.finished:
            self.step(min(max_new - len(self.new) - 1, self.max_draft))
        wall = self.clock() - t_start
        text = self.model.tokenizer.decode(self.new) if self.model.tokenizer is not None else ""
        return GenerationResult(tuple(prompt_ids), tuple(self.new), text, tuple(self.prov), tuple(self.steps),
                                summarise(self.new, self.prov, self.steps, prefill_s, wall),
                                "eos" if self.finished else "length")

    def prefill(self, prompt_ids: list[int], max_new: int) -> None:
        P = len(prompt_ids)
        depth = max(self.max_draft, getattr(self.probe, "depth", 0))
        self.buf = torch.zeros(1, P + max_new + depth + 2, dtype=torch.long, device=self.device)  # tokens, drafts
        self.buf[0, :P] = torch.tensor(prompt_ids, device=self.device)
        self.fwd = causal_forward(self.model.target, self.engine)
        h = self.fwd.forward(self.buf[:, :P])  # [1, P, H]
        logits = self.fwd.logits(h[:, -1:])[0, -1]  # [V]
        t0 = int(torch.multinomial(warp(logits, **self.warp_kw), 1, generator=self.gen)[0]) if self.sample \
            else int(logits.argmax())
        self.buf[0, P] = t0
        self.drafter.begin(self.buf, P, h)
        self.n = P  # index of the last committed token (not yet processed by the target)
        self.new, self.prov, self.steps = [t0], ["target"], []
        self.stats, self.last_accepted, self.finished = AcceptanceStats(), -1, t0 in self.eos
        self.policy.reset()

    def step(self, budget: int) -> None:
        """Draft phase -> one target forward -> walk -> commit and crop -> observe."""
        t_draft = self.clock()
        self.qs: list[torch.Tensor] = []  # q of d_1.. (sampling needs them in the walk)
        state = StepState(step=len(self.steps), position=len(self.new), budget=budget, stats=self.stats,
                          last_accepted=self.last_accepted, native_depths=self.drafter.native_depths)
        state, action = draft_phase(self.policy, state, self.next_draft)
        m, mask = state.depth, trust_mask(action, state.depth)
        if self.probe is not None:
            self.probe(state, self.next_draft)
        t_verify = self.clock()
        h = self.fwd.forward(self.buf[:, self.n : self.n + m + 1])  # [1, m+1, H]
        judge = self.judge(self, self.fwd.logits(h)[0], state.drafts)  # logits [m+1, V]
        block = walk(state.drafts, mask, judge, self.relaxed is not None, self.eos)
        self.commit(block, h, m)
        t_end = self.clock()
        self.observe(state, mask, block, judge.tokens[: block.walked], t_verify - t_draft, t_end - t_verify)

    def next_draft(self, depth: int) -> tuple[int, float, float, float] | None:
        """Draft d_depth from the committed frontier into buf[n + depth]; (d, q(d), H(q), margin) or None."""
        logits = self.drafter.draft(depth, self.buf, self.n)  # [V]
        if logits is None:
            return None
        if self.sample:
            q = warp(logits, **self.warp_kw)
            d = torch.multinomial(q, 1, generator=self.gen)[0]
        else:
            q = torch.softmax(logits.float(), -1)
            d = q.argmax()
        self.buf[0, self.n + depth] = d
        self.qs.append(q)
        conf, ent, margin = draft_features(q, d).tolist()
        return int(d), conf, ent, margin

    def commit(self, block: Block, h: torch.Tensor, m: int) -> None:
        """Write the committed tokens; crop the target cache (it processed n..n+m) and the drafter to them."""
        n, n_new = self.n, self.n + len(block.committed)
        self.buf[0, n + 1 : n_new + 1] = torch.tensor(block.committed, device=self.device)
        if n + m + 1 > n_new:  # keep processed positions <= n_new - 1
            self.fwd.crop(n_new)
        self.drafter.advance(h)
        self.drafter.crop(n_new)
        self.n = n_new
        self.new += block.committed
        self.prov += block.provenance
        self.finished = block.eos

    def observe(self, state: StepState, mask: tuple[bool, ...], block: Block, target_tokens: list[int],
                draft_s: float, verify_s: float) -> None:
        self.steps.append(StepRecord(
            step=state.step, position=state.position, drafts=state.drafts, confidence=state.confidence,
            entropy=state.entropy, margin=state.margin, action="trust" if any(mask) else "verify", trusted=mask,
            verdicts=block.verdicts, accept_prob=block.accept_prob, accepted=block.accepted,
            committed=block.committed, provenance=block.provenance, target_tokens=tuple(target_tokens),
            draft_s=draft_s, verify_s=verify_s,
        ))
        outcome = StepOutcome(drafted=state.depth, accepted=block.accepted, trusted=mask, verdicts=block.verdicts,
                              committed=len(block.committed), draft_s=draft_s, verify_s=verify_s)
        self.policy.observe(outcome)
        self.stats, self.last_accepted = self.stats.updated(outcome), block.accepted
