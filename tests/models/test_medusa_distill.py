"""Self-distillation of Medusa heads (``experiments.train_heads distill=...``): the soft targets are the target's own
next-token distributions of the right rows, and the mixed loss reduces to the hard one where it should."""

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from specpolicy.models.medusa import MedusaHeads, greedy_rows, medusa_labels, medusa_loss, soft_targets
from specpolicy.testing import small_model


def _rows(model, new=12):
    prompts = torch.randint(2, model.target.config.vocab_size, (3, 5), generator=torch.Generator().manual_seed(0))
    seqs, hidden = greedy_rows(model.target, prompts, new)
    h = hidden.reshape(-1, hidden.shape[-1])
    labels = medusa_labels(seqs, 3, prompts.shape[1] - 1)[:, :, :-1].reshape(3, -1)
    return h, labels


def test_soft_targets_are_the_targets_distribution_whose_argmax_is_the_label():
    model = small_model()
    h, labels = _rows(model)
    lm_head = model.target.get_output_embeddings()
    soft = soft_targets(lm_head, h, torch.arange(h.shape[0]), 3)
    for k in range(3):
        ok = labels[k] != -100
        assert ok.sum() > 0
        assert torch.equal(soft[k].argmax(-1)[ok], labels[k][ok])
        assert torch.allclose(soft[k].sum(-1), torch.ones(h.shape[0], dtype=soft[k].dtype))


def test_mixed_loss_is_the_hard_loss_at_distill_0_and_for_one_hot_targets():
    model = small_model()
    h, labels = _rows(model)
    lm_head = model.target.get_output_embeddings()
    cfg = model.target.config
    torch.manual_seed(0)
    heads = MedusaHeads(cfg.hidden_size, cfg.vocab_size, 3).double()
    with torch.no_grad():
        for p in heads.parameters():
            p.normal_(0, 0.1)
    hard = medusa_loss(heads, lm_head, h, labels)
    soft = soft_targets(lm_head, h, torch.arange(h.shape[0]), 3)
    assert all(torch.equal(a, b) for a, b in zip(hard, medusa_loss(heads, lm_head, h, labels, soft, 0.0)))
    one_hot = [F.one_hot(labels[k].clamp(min=0), cfg.vocab_size).to(soft[0].dtype) for k in range(3)]
    for a, b in zip(hard, medusa_loss(heads, lm_head, h, labels, one_hot, 1.0)):
        assert torch.allclose(a, b)
    mixed = medusa_loss(heads, lm_head, h, labels, soft, 0.5)
    assert any(not torch.allclose(a, b) for a, b in zip(hard, mixed))  # the soft part is not the label's CE


@pytest.mark.parametrize("setting, message", [({"distill": 1.5}, "distill=1.5"),
                                              ({"distill": 0.5, "text_windows": 4}, "text_windows")])
def test_bad_distill_settings_are_one_line(setting, message):
    from experiments.common import UserError
    from experiments.train_heads import TrainHeadsConfig, plan_of

    with pytest.raises(UserError, match=message):
        plan_of(OmegaConf.structured(TrainHeadsConfig(smoke=True, **setting)))
