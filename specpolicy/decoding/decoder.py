"""The decode loop: the only one in the code base. A policy decides; this module runs the models.

    prefill -> bonus token t0
    loop: draft d_1.. while the policy says EXTEND; TRUST(mask)/VERIFY ends drafting
          one target forward over [t_n, d_1..d_m]
          walk the drafts: trusted -> commit (shadow verdict recorded); else strict rule (or relaxed);
          first rejection -> commit the target's correction, stop; all accepted -> commit the bonus token
          crop target and drafter caches to the committed prefix; policy.observe(outcome)

With greedy decoding and no trusted/relaxed token the output equals ``target.generate(do_sample=False)``.

Example:
    >>> res = generate(model, "def parse(", policy=get_policy("threshold", tau_trust=0.95), max_new_tokens=64)
    >>> res.text, res.stats.tpf, res.provenance[:5]
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
from transformers import DynamicCache

from ..policies import Action, ActionKind, Policy, StepOutcome, StepState, get_policy
from ..policies.base import AcceptanceStats
from .acceptance import draft_features, relaxed_accept, residual, sampling_accept, warp
from .drafter import DrafterState
from .result import GenerationResult, StepRecord, summarise


class DecodeError(ValueError):
    """Bad arguments to ``generate`` (one clear line: what is wrong, what is allowed)."""


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


def _eos_ids(model) -> set[int]:
    eos = getattr(model.target.generation_config, "eos_token_id", None)
    if eos is None:
        eos = model.eos_token_id
    return set(eos) if isinstance(eos, list | tuple) else ({eos} if eos is not None else set())


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
    probe_depth: int = 0,
    **policy_params,
) -> GenerationResult:
    """Decode ``prompt`` with ``policy`` (a registered name or a ``Policy`` instance).

    temperature=0 is greedy; otherwise speculative sampling with temperature/top-p/top-k applied identically to p and
    q, drawing from a ``torch.Generator`` seeded with ``seed``. ``probe_depth`` > 0 also drafts (never verifies) the
    chain up to that depth at every step, for trace recording.

    >>> res = generate(load_model("tiny"), "import os\\n", "fixed", k=3, max_new_tokens=32)
    """
    _check_args(max_new_tokens, temperature, top_p, top_k, max_draft)
    policy = get_policy(policy, **policy_params) if isinstance(policy, str) else policy
    if isinstance(prompt, str):
        if prompt and model.tokenizer is None:
            raise DecodeError("prompt is text but the model has no tokenizer; allowed: a list of token ids")
        prompt_ids = model.tokenizer.encode(prompt, add_special_tokens=False) if prompt else []
    else:
        prompt_ids = [int(t) for t in prompt]
    if not prompt_ids:
        raise DecodeError("prompt is empty; allowed: a non-empty string or list of token ids")
    return _Loop(model, policy, temperature, top_p, top_k, seed, max_draft, probe_depth).run(prompt_ids, max_new_tokens)


class _Loop:
    def __init__(self, model, policy, temperature, top_p, top_k, seed, max_draft, probe_depth):
        self.model, self.policy = model, policy
        self.sample = temperature > 0
        self.warp_kw = {"temperature": temperature, "top_p": top_p, "top_k": top_k}
        self.device = model.device
        self.gen = torch.Generator(self.device)
        self.gen.manual_seed(seed if seed is not None else 0)
        self.max_draft, self.probe_depth = max_draft, probe_depth
        self.body, self.head = model.target.get_decoder(), model.target.get_output_embeddings()
        self.eos = _eos_ids(model)

    def _pick(self, probs_or_logits: torch.Tensor) -> torch.Tensor:
        """Target token: argmax of logits (greedy) or a draw from warped probs (sampling)."""
        if self.sample:
            return torch.multinomial(probs_or_logits, 1, generator=self.gen)[0]
        return probs_or_logits.argmax(-1)

    def _draft(self, ds: DrafterState, depth: int, buf: torch.Tensor, n: int):
        """Draft d_depth from frontier index n-1; writes it into buf[n + depth]; returns (d, q(d), H, margin, q)."""
        logits = ds.draft(depth, buf, n - 1)  # [V]
        if self.sample:
            q = warp(logits, **self.warp_kw)
            d = torch.multinomial(q, 1, generator=self.gen)[0]
        else:
            q = torch.softmax(logits.float(), -1)
            d = q.argmax()
        buf[0, n + depth] = d
        conf, ent, margin = draft_features(q, d).tolist()
        return int(d), conf, ent, margin, q

    def run(self, prompt_ids: list[int], max_new: int) -> GenerationResult:
        t_start = time.perf_counter()
        P = len(prompt_ids)
        buf = torch.zeros(1, P + max_new + max(self.max_draft, self.probe_depth) + 2, dtype=torch.long, device=self.device)
        buf[0, :P] = torch.tensor(prompt_ids, device=self.device)
        tcache = DynamicCache(config=self.model.target.config)
        ds = DrafterState(self.model.drafter, self.model.drafter.config)
        h = self.body(input_ids=buf[:, :P], cache=tcache).last_hidden_state  # [1, P, H]
        logits = self.head(h[:, -1:])[0, -1]  # [V]
        t0 = self._pick(warp(logits, **self.warp_kw) if self.sample else logits)
        buf[0, P] = t0
        ds.extend_target_hidden(h)
        new, prov, steps = [int(t0)], ["target"], []
        n = P  # position of the last committed token (not yet processed by the target)
        self.policy.reset()
        stats, last_accepted = AcceptanceStats(), -1
        prefill_s = time.perf_counter() - t_start
        finished = "eos" if new[0] in self.eos else "length"
        while len(new) < max_new and finished != "eos":
            # ---- draft: the policy decides, the drafter drafts
            td = time.perf_counter()
            budget = min(max_new - len(new) - 1, self.max_draft)
            state = StepState(step=len(steps), position=len(new), budget=budget,
                              num_mtp_layers=self.model.num_mtp_layers, stats=stats, last_accepted=last_accepted)
            qs = []
            while True:
                action = self.policy.decide(state)
                if action.kind is not ActionKind.EXTEND or state.depth >= budget:
                    break
                d, c, e, mg, q = self._draft(ds, state.depth + 1, buf, n)
                qs.append(q)
                state = replace(state, drafts=state.drafts + (d,), confidence=state.confidence + (c,),
                                entropy=state.entropy + (e,), margin=state.margin + (mg,))
            m = state.depth
            mask = self._mask(action, m)
            probe = [self._draft(ds, j, buf, n)[:4] for j in range(m + 1, self.probe_depth + 1)]
            # ---- verify: one target forward over [t_n, d_1..d_m]
            tv = time.perf_counter()
            h = self.body(input_ids=buf[:, n : n + m + 1], cache=tcache).last_hidden_state  # [1, m+1, H]
            logits = self.head(h)[0]  # [m+1, V]
            committed, cprov, verdicts, aprob, greedy = self._walk(logits, state.drafts, qs, mask)
            if any(t in self.eos for t in committed):  # nothing after EOS is committed
                cut = next(i for i, t in enumerate(committed) if t in self.eos) + 1
                committed, cprov, finished = committed[:cut], cprov[:cut], "eos"
            accepted = sum(1 for p in cprov if p != "target")
            n_new = n + len(committed)
            buf[0, n + 1 : n_new + 1] = torch.tensor(committed, device=self.device)
            if n + m + 1 > n_new:  # processed positions n..n+m; keep those <= n_new - 1
                tcache.crop(n_new - (n + m + 1))
            ds.extend_target_hidden(h)
            ds.crop(n_new)
            t_end = time.perf_counter()
            rec = StepRecord(
                step=len(steps), position=len(new), drafts=state.drafts, confidence=state.confidence,
                entropy=state.entropy, margin=state.margin, action="trust" if any(mask) else "verify",
                trusted=mask, verdicts=verdicts, accept_prob=aprob, accepted=accepted, committed=tuple(committed),
                provenance=tuple(cprov), target_tokens=greedy, draft_s=tv - td, verify_s=t_end - tv,
                probe=tuple(p[0] for p in probe), probe_confidence=tuple(p[1] for p in probe),
                probe_entropy=tuple(p[2] for p in probe), probe_margin=tuple(p[3] for p in probe),
            )
            steps.append(rec)
            new += committed
            prov += cprov
            n = n_new
            outcome = StepOutcome(drafted=m, accepted=accepted, trusted=mask, verdicts=verdicts,
                                  committed=len(committed), draft_s=rec.draft_s, verify_s=rec.verify_s)
            self.policy.observe(outcome)
            stats, last_accepted = stats.updated(outcome), accepted
        wall = time.perf_counter() - t_start
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        text = self.model.tokenizer.decode(new) if self.model.tokenizer is not None else ""
        return GenerationResult(tuple(prompt_ids), tuple(new), text, tuple(prov), tuple(steps),
                                summarise(new, prov, steps, prefill_s, wall), finished)

    @staticmethod
    def _mask(action: Action, m: int) -> tuple[bool, ...]:
        if action.kind is not ActionKind.TRUST:
            return (False,) * m
        if len(action.mask) > m:
            raise ValueError(f"trust mask has {len(action.mask)} entries but only {m} drafts exist")
        return action.mask + (False,) * (m - len(action.mask))

    def _walk(self, logits: torch.Tensor, drafts: tuple[int, ...], qs: list[torch.Tensor], mask: tuple[bool, ...]):
        """Apply the rules to d_1..d_m. logits: [m+1, V]. Returns committed tokens, provenance, verdicts,
        acceptance probabilities and the target's greedy token at each walked position."""
        m = len(drafts)
        greedy = logits.argmax(-1).tolist()  # the one host sync greedy acceptance needs
        probs = warp(logits, **self.warp_kw) if self.sample else None  # [m+1, V]
        rule = self.policy.acceptance
        committed, prov, verdicts, aprob = [], [], [], []
        for j, d in enumerate(drafts):
            if self.sample:
                u = torch.rand((), generator=self.gen, device=self.device)
                ok, ratio = sampling_accept(probs[j], qs[j], torch.tensor(d, device=self.device), u)
                ok, ratio = bool(ok), float(ratio)
            else:
                ok = d == greedy[j]
                ratio = float(ok)
            verdicts.append(ok)
            aprob.append(ratio)
            if mask[j] or ok:
                committed.append(d)
                prov.append("trusted" if mask[j] else "verified")
                continue
            if rule is not None:
                p = probs[j] if self.sample else torch.softmax(logits[j].float(), -1)
                if bool(relaxed_accept(rule, p, torch.tensor(d, device=self.device))):
                    committed.append(d)
                    prov.append("relaxed")
                    continue
            fix = self._pick(residual(probs[j], qs[j])) if self.sample else greedy[j]
            committed.append(int(fix))
            prov.append("target")
            return committed, prov, tuple(verdicts), tuple(aprob), tuple(greedy[: j + 1])
        bonus = self._pick(probs[m]) if self.sample else greedy[m]
        committed.append(int(bonus))
        prov.append("target")
        return committed, prov, tuple(verdicts), tuple(aprob), tuple(greedy)
