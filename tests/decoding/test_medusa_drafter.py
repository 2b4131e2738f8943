"""The Medusa drafter: the protocol members read the right hidden state and head, and decoding with it is lossless
(greedy = ``target.generate``; sampling keeps the target's law) on the harness's float64 models."""

import torch

from specpolicy import generate, get_policy
from specpolicy.decoding.drafters import check_drafter, drafter_for
from specpolicy.decoding.drafters.medusa import MedusaDrafter
from specpolicy.models.mtp import MTPModel
from specpolicy.testing import check_lossless, small_model
from specpolicy.testing.drafters import _medusa_heads


def fitted_heads(model):
    """Random heads fitted briefly to the model's greedy continuations (``specpolicy.testing.drafters``)."""
    return _medusa_heads(model.target)


def factory(model) -> MedusaDrafter:
    return MedusaDrafter(fitted_heads(model), model.target)


def test_draft_reads_head_j_at_the_frontier_and_crop_keeps_the_committed_prefix():
    torch.set_num_threads(1)
    model = small_model(seed=0, k=1)
    heads = fitted_heads(model)
    d = check_drafter(MedusaDrafter(heads, model.target))
    assert (d.name, d.native_depths) == ("medusa", 3)
    ids = torch.tensor([[5, 9, 2, 7, 11, 3, 8, 1]])
    with torch.no_grad():
        h = model.target.get_decoder()(input_ids=ids).last_hidden_state  # [1, 8, H]
        lm_head = model.target.get_output_embeddings()
        d.begin(ids, 5, h[:, :5])
        for j in (1, 2, 3, 5):  # depth 5 > K: the last head again
            want = lm_head(heads.features(h[0, 4], min(j, 3) - 1))
            assert torch.equal(d.draft(j, ids, 5), want)
        d.advance(h[:, 5:8])  # block at indices 5..7 verified
        d.crop(7)  # committed up to t_7: indices 0..6 processed and kept
        assert d.hidden.shape[1] == 7 and torch.equal(d.hidden, h[:, :7])
        assert torch.equal(d.draft(1, ids, 7), lm_head(heads.features(h[0, 6], 0)))


def test_registry_builds_the_medusa_drafter_from_a_loaded_model():
    model = small_model(seed=0, k=1)
    wrapped = MTPModel(model.target, fitted_heads(model), None, drafter_name="medusa")
    d = drafter_for(wrapped)
    assert isinstance(d, MedusaDrafter) and d.heads is wrapped.drafter


def test_fixed_is_lossless_with_medusa_heads_greedy_and_sampling():
    torch.set_num_threads(1)
    report = check_lossless(get_policy("fixed", k=3), drafter=factory, n_samples=400)
    assert report.greedy_prompts == 24 and report.greedy_exact == 24 and report.sampling_p_value > 1e-3


def test_threshold_is_lossless_with_medusa_heads():
    torch.set_num_threads(1)
    report = check_lossless(get_policy("threshold", tau_extend=0.2, k_max=5), drafter=factory, sampling=False)
    assert report.greedy_exact == report.greedy_prompts == 24


def test_drafts_are_sometimes_right_and_sometimes_wrong():
    """The lossless checks above have teeth: the heads' drafts are neither all accepted nor all rejected."""
    model = small_model(seed=1, k=2)
    accepted = drafted = 0
    for seed in range(4):
        prompt = torch.randint(0, 64, (6,), generator=torch.Generator().manual_seed(seed)).tolist()
        res = generate(model, prompt, "fixed", k=3, max_new_tokens=32, drafter=factory(model))
        accepted, drafted = accepted + res.stats.accepted, drafted + res.stats.drafted
    assert 0 < accepted < drafted
