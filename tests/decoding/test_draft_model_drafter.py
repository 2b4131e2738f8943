"""The draft-model drafter: lossless through the harness (greedy and sampling), and its cache reads exactly the
context a from-scratch forward of the draft model reads, through catch-up and crops."""


import torch

from specpolicy.decoding.drafters import DRAFTERS, check_drafter, drafter_for
from specpolicy.decoding.drafters.draft_model import DraftModelDrafter
from specpolicy.models.mtp import MTPModel
from specpolicy.policies import get_policy
from specpolicy.policies.registry import MAX_DEPTH
from specpolicy.testing import check_lossless, small_model
from specpolicy.testing.drafters import _draft_lm as _lm


def factory(model):
    return DraftModelDrafter(_lm(model.target))


def test_lossless_greedy_and_sampling():
    report = check_lossless(get_policy("fixed", k=3), drafter=factory, n_prompts=3, max_new_tokens=24, n_samples=400)
    assert report.ok and report.greedy_exact == report.greedy_prompts == 9
    assert report.sampling_p_value > 1e-3 and report.sampling_power_p_value < 1e-6


def test_lossless_greedy_adaptive_policy():
    policy = get_policy("threshold", tau_extend=0.3, k_max=5)
    report = check_lossless(policy, drafter=factory, n_prompts=3, max_new_tokens=24, sampling=False)
    assert report.ok and report.greedy_exact == report.greedy_prompts == 9


def test_drafts_are_accepted_sometimes():
    from specpolicy.decoding import generate

    small = small_model(seed=0, k=1)
    res = generate(small, [3, 5, 7, 9], "fixed", k=3, max_new_tokens=32, drafter=factory(small))
    accepted = sum(st.accepted for st in res.steps)
    assert 0 < accepted < 3 * len(res.steps) and res.stats.tpf > 1


def test_cache_matches_a_fresh_forward_through_catch_up_and_crop():
    small = small_model(seed=1, k=1)
    lm = _lm(small.target, init=False)
    d = DraftModelDrafter(lm)
    tokens = torch.randint(0, 64, (1, 40), generator=torch.Generator().manual_seed(0))

    def fresh(end):  # logits of the token at index `end`, having read tokens[0, :end]
        return lm(input_ids=tokens[:, :end]).logits[0, -1]

    n = 6
    d.begin(tokens, n, hidden=torch.zeros(1, n, 32, dtype=torch.float64))
    for step_accepts in (3, 0, 2, 5):
        for depth in range(1, 4):
            torch.testing.assert_close(d.draft(depth, tokens, n), fresh(n + depth), rtol=0, atol=1e-10)
        n += min(step_accepts, 3) + 1  # accepted drafts + the correction/bonus token
        d.advance(torch.zeros(1, 4, 32, dtype=torch.float64))
        d.crop(n)
        assert d.length <= n
    torch.testing.assert_close(d.draft(1, tokens, n), fresh(n + 1), rtol=0, atol=1e-10)
    torch.testing.assert_close(d.draft(1, tokens, n), fresh(n + 1), rtol=0, atol=1e-10)  # asked again: same q


def test_registered_and_every_depth_native():
    small = small_model(seed=0, k=1)
    model = MTPModel(small.target, _lm(small.target), None, drafter_name="draft")
    d = check_drafter(drafter_for(model))
    assert "draft" in DRAFTERS and isinstance(d, DraftModelDrafter)
    assert (d.name, d.native_depths) == ("draft", MAX_DEPTH)
