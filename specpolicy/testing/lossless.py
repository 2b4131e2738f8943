"""``check_lossless``: is a policy (with a drafter) really lossless? Greedy: token for token what
``target.generate(do_sample=False)`` commits. Sampling: the law of the first tokens is the target's.

Greedy, on small float64 models built here (1..3 MTP layers, drafts often but not always right, see
``testing.models``) and on ``model`` if one is given: every generated prompt's output must equal transformers'
greedy output, and every run's accounting must be that of a lossless run (only ``target``/``verified`` tokens, one
target token per step after the accepted drafts, verdicts = "draft == argmax p").

Exact equality is the promise in float64. In float32 and half precision a block forward over [t_n, d_1..d_m] and
one-token forwards round differently, so an output may leave the reference at a numerical near-tie; ``compare``
is the seam for that rule (default: exact equality).

Sampling, on a 10-token float64 model with a half-random drafter (``tie=0.5``: q far from p): the exact law of the
first 3 new tokens under the warped target is enumerated, the policy decodes ``n_samples`` seeds, and a chi-square
test (cells with expected count < 5 merged) must not reject (p > ``alpha``). Power: the same test must reject a
policy that trusts every draft (p < 1e-6) at the same sample size, else the check itself is too weak.

Example:
    >>> from specpolicy.testing import check_lossless
    >>> report = check_lossless(MyPolicy(), drafter=lambda model: MyDrafter(model))   # AssertionError if not
    >>> report.greedy_prompts, report.sampling_p_value
    (24, 0.41)
"""

from __future__ import annotations

import functools
import itertools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..policies import Policy
from .models import small_model

__all__ = ["LosslessReport", "check_lossless", "exact_compare", "exact_law", "chi2_pvalue", "greedy_accounting",
           "hf_greedy", "sampling_law_test"]

SAMPLING_VOCAB, SAMPLING_PROMPT, FIRST = 10, (1, 2, 3), 3


@dataclass
class LosslessReport:
    """What ``check_lossless`` ran and found."""

    greedy_prompts: int = 0
    greedy_exact: int = 0
    mismatches: list = field(default_factory=list)  # (where, prompt, first differing index)
    verdicts: Counter = field(default_factory=Counter)  # compare's verdicts ("exact", or the seam's own)
    sampling_p_value: float | None = None
    sampling_power_p_value: float | None = None
    sampling_samples: int = 0
    sampling_ok: bool = True

    @property
    def ok(self) -> bool:
        return not self.mismatches and self.sampling_ok


def hf_greedy(model, prompt: list[int], max_new_tokens: int, eos_token_id=None) -> tuple[int, ...]:
    """New tokens of ``model.target.generate(do_sample=False)``: the greedy reference. ``eos_token_id=None``: the
    model's generation config decides (transformers' own default)."""
    ids = torch.tensor([list(prompt)], device=model.device)
    pad = getattr(model.tokenizer, "pad_token_id", None) if model.tokenizer is not None else None
    kw = {} if eos_token_id is None else {"eos_token_id": eos_token_id}
    with torch.no_grad():
        out = model.target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                    do_sample=False, pad_token_id=0 if pad is None else pad, **kw)
    return tuple(out[0, len(prompt):].tolist())


def exact_compare(model, prompt, ours, reference) -> str:
    """The float64 rule: "exact" or "mismatch"."""
    return "exact" if tuple(ours) == tuple(reference) else "mismatch"


def greedy_accounting(res, max_new: int) -> None:
    """What every lossless greedy result satisfies, whatever the policy; ``AssertionError`` otherwise."""
    s = res.stats
    assert set(res.provenance) <= {"target", "verified"}, f"lossy provenance {set(res.provenance)}"
    assert s.lossy_tokens == s.trusted_tokens == s.relaxed_tokens == 0 and s.shadow_rejects == s.shadow_accepts == 0
    assert s.new_tokens == len(res.token_ids) <= max_new
    assert s.target_forwards == 1 + s.steps == 1 + len(res.steps)
    assert abs(s.tpf - s.new_tokens / s.target_forwards) < 1e-12
    assert sum(len(st.committed) for st in res.steps) + 1 == s.new_tokens
    assert s.accepted == sum(st.accepted for st in res.steps) == res.provenance.count("verified")
    assert s.drafted == sum(len(st.drafts) for st in res.steps)
    assert tuple(t for st in res.steps for t in st.committed) == res.token_ids[1:]
    for st in res.steps:
        # greedy verdicts are exactly "draft == target's argmax"; committed drafts first, then the target's token
        assert st.verdicts == tuple(d == t for d, t in zip(st.drafts, st.target_tokens)), f"step {st.step}"
        assert st.committed[: st.accepted] == st.drafts[: st.accepted], f"step {st.step}"
        if res.finished_by == "length" or st is not res.steps[-1]:
            assert st.provenance == ("verified",) * st.accepted + ("target",), f"step {st.step}"
            assert st.committed[-1] == st.target_tokens[st.accepted], f"step {st.step}"


def _drafter(drafter, model):
    """A fresh drafter for ``model``: None -> the model's own; a factory -> called on the model."""
    if drafter is None:
        return None
    return drafter(model) if callable(drafter) and not hasattr(drafter, "draft") else drafter


def _greedy_on(model, policy, drafter, prompts, max_new, compare, report, where) -> None:
    from ..decoding import generate

    for prompt in prompts:
        res = generate(model, prompt, policy, max_new_tokens=max_new, drafter=_drafter(drafter, model))
        ref = hf_greedy(model, prompt, max_new)
        verdict = compare(model, prompt, res.token_ids, ref)
        report.greedy_prompts += 1
        report.verdicts[verdict] += 1
        if verdict == "mismatch":
            first = next((i for i, (a, b) in enumerate(zip(res.token_ids, ref)) if a != b),
                         min(len(res.token_ids), len(ref)))
            report.mismatches.append((where, list(prompt), first))
            continue
        report.greedy_exact += verdict == "exact"
        try:
            greedy_accounting(res, max_new)
        except AssertionError as err:
            report.mismatches.append((where, list(prompt), f"accounting: {err}"))


def exact_law(model, prompt, n: int, temperature: float, top_k: int = 0, top_p: float = 1.0) -> dict:
    """P(first n new tokens = s) under the target warped as transformers' logits warpers define temperature, top-k
    and top-p (an independent reference for the decoder's ``warp``), by enumerating all V^(n-1) prefixes at once."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = [TemperatureLogitsWarper(temperature)] + ([TopKLogitsWarper(top_k)] if top_k else []) \
        + ([TopPLogitsWarper(top_p)] if top_p < 1.0 else [])
    vocab = model.target.config.get_text_config().vocab_size
    prefixes = list(itertools.product(range(vocab), repeat=n - 1))
    ids = torch.tensor([list(prompt) + list(s) for s in prefixes])  # [V^(n-1), P + n - 1]
    with torch.no_grad():
        logits = model.target(input_ids=ids).logits[:, len(prompt) - 1:]  # [V^(n-1), n, V]
    probs = []
    for j in range(n):
        lj = logits[:, j]
        for w in warpers:
            lj = w(None, lj)
        probs.append(torch.softmax(lj, -1).tolist())
    law = {}
    for i, s in enumerate(prefixes):
        head = 1.0
        for j, t in enumerate(s):
            head *= probs[j][i][t]
        for t in range(vocab):
            law[s + (t,)] = head * probs[n - 1][i][t]
    return law


def chi2_pvalue(counts: Counter, law: dict, n: int) -> float:
    """Chi-square goodness of fit; cells with expected count < 5 (and unseen outcomes) merged into one."""
    from scipy.stats import chisquare

    big = [s for s, p in law.items() if p * n >= 5]
    observed = [counts.get(s, 0) for s in big]
    expected = [law[s] * n for s in big]
    rest_obs, rest_exp = n - sum(observed), n - sum(expected)
    if rest_exp >= 5 or rest_obs > 0:
        observed.append(rest_obs)
        expected.append(max(rest_exp, 1e-12))
    return float(chisquare(observed, expected).pvalue)


def sampling_law_test(model, policy, n_samples: int, drafter=None, temperature: float = 1.0, top_k: int = 0,
                      top_p: float = 1.0, max_new: int = FIRST + 1) -> tuple[float, Counter]:
    """(chi-square p-value, outcome counts) of the first ``FIRST`` tokens' law over ``n_samples`` seeds."""
    from ..decoding import generate

    law = exact_law(model, SAMPLING_PROMPT, FIRST, temperature, top_k, top_p)
    counts = Counter()
    for seed in range(n_samples):
        res = generate(model, list(SAMPLING_PROMPT), policy, max_new_tokens=max_new, temperature=temperature,
                       top_k=top_k, top_p=top_p, seed=seed, drafter=_drafter(drafter, model))
        counts[tuple(res.token_ids[:FIRST])] += 1
    return chi2_pvalue(counts, law, n_samples), counts


def _power(small, n_samples: int, drafter) -> float:
    """The sampling test's p-value for a policy that trusts every draft: it must reject (the test can see)."""
    from ..policies import get_policy

    trust_all = get_policy("threshold", tau_extend=0.0, tau_trust=0.0, k_max=3)
    return sampling_law_test(small, trust_all, n_samples, drafter)[0]


@functools.lru_cache(maxsize=4)
def _default_power(n_samples: int) -> float:
    return _power(small_model(seed=0, k=2, vocab=SAMPLING_VOCAB, sharpen=25.0, tie=0.5), n_samples, None)


def check_lossless(policy: Policy, drafter=None, model=None, n_prompts: int = 8, max_new_tokens: int = 32,
                   sampling: bool = True, n_samples: int = 1000, alpha: float = 1e-3,
                   compare: Callable = exact_compare, raise_on_failure: bool = True, seed: int = 0,
                   power: bool = True) -> LosslessReport:
    """Check that ``policy`` (with ``drafter``) decodes losslessly (module docstring).

    ``drafter``: None (the model's own MTP layers), a ``Drafter``, or a factory ``model -> Drafter`` (needed for
    the harness's own small models; a plain instance is only used on ``model``). ``model``: also check on this
    model (its own dtype; ``compare`` decides what counts as a mismatch). Raises ``AssertionError`` listing the
    mismatches (or the sampling test's p-value) unless ``raise_on_failure`` is False; returns the report.
    ``power=False`` skips the power check (run it once per drafter, not once per policy).
    """
    report = LosslessReport()
    factory = drafter is None or (callable(drafter) and not hasattr(drafter, "draft"))
    rng = random.Random(seed)
    if factory:
        for model_seed, k in ((seed, 1), (seed + 1, 2), (seed + 2, 3)):
            small = small_model(seed=model_seed, k=k)
            vocab = small.target.config.vocab_size
            prompts = [[rng.randrange(vocab) for _ in range(rng.randint(1, 20))] for _ in range(n_prompts)]
            _greedy_on(small, policy, drafter, prompts, max_new_tokens, exact_compare, report,
                       f"float64 model seed={model_seed} K={k}")
    if model is not None:
        vocab = model.target.config.get_text_config().vocab_size
        prompts = [[rng.randrange(vocab) for _ in range(rng.randint(4, 24))] for _ in range(n_prompts)]
        _greedy_on(model, policy, drafter, prompts, max_new_tokens, compare, report, f"given model {model.name}")
    if sampling and factory:
        small = small_model(seed=0, k=2, vocab=SAMPLING_VOCAB, sharpen=25.0, tie=0.5)
        report.sampling_samples = n_samples
        report.sampling_p_value, _ = sampling_law_test(small, policy, n_samples, drafter)
        if power:
            report.sampling_power_p_value = _power(small, n_samples, drafter) if drafter is not None else \
                _default_power(n_samples)
        report.sampling_ok = report.sampling_p_value > alpha and (not power or report.sampling_power_p_value < 1e-6)
    if raise_on_failure and not report.ok:
        lines = [f"{policy!r} is not lossless:"]
        lines += [f"  greedy output differs from target.generate on {w}, prompt {p}: {d}" for w, p, d in
                  report.mismatches[:10]]
        if not report.sampling_ok:
            lines.append(f"  sampling: chi-square p = {report.sampling_p_value:.3g} (needs > {alpha}); power check "
                         f"p = {report.sampling_power_p_value:.3g} (needs < 1e-6 for a policy that trusts all)")
        raise AssertionError("\n".join(lines))
    return report
