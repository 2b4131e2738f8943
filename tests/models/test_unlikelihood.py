"""Sequence-level unlikelihood (anti-looping fine-tune): the mask, the loss, and that a few steps of it do their job."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from experiments.train_tiny import TrainConfig, selection_score
from specpolicy.models.unlikelihood import (
    copy_start_mask,
    greedy_continue,
    repeated_ngram_mask,
    unlikelihood_from_logits,
    unlikelihood_loss,
)


@pytest.fixture
def tiny_random_lm():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=24, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128)
    lm = LlamaForCausalLM(cfg).float()
    with torch.no_grad():
        lm.lm_head.weight.mul_(30.0)  # peaked next-token distributions, like a trained model's
    return lm


def test_mask_marks_later_copies_only():
    seq = torch.tensor([[1, 2, 3, 1, 2, 3, 1, 2]])
    assert repeated_ngram_mask(seq, n=2).int().tolist() == [[0, 0, 0, 1, 1, 1, 1, 1]]
    assert repeated_ngram_mask(seq, n=3).int().tolist() == [[0, 0, 0, 1, 1, 1, 1, 1]]
    assert not repeated_ngram_mask(torch.arange(20)[None], n=2).any()  # nothing repeats


def test_mask_ignores_the_prompt():
    # (5, 6) occurs in the prompt and once in the continuation: copying from the prompt is not a repeat
    seq = torch.tensor([[5, 6, 9, 5, 6, 7, 8, 7, 8]])
    m = repeated_ngram_mask(seq, n=2, start=3)
    assert m.int().tolist() == [[0, 0, 0, 0, 0, 0, 0, 1, 1]]  # only the second (7, 8) repeats
    assert repeated_ngram_mask(seq, n=2, start=0)[0, 3:5].all()


def test_copy_start_mask_marks_where_the_loop_is_entered():
    seq = torch.tensor([[9, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 7]])  # period-4 loop from index 1
    assert copy_start_mask(seq, n=3, start=1, span=2).int().tolist() == [[0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0]]
    assert copy_start_mask(seq, n=3, start=1, span=1).sum() == 1  # one run of copying, one decision
    # two separate copy runs -> two starts
    two = torch.tensor([[1, 2, 3, 8, 1, 2, 3, 9, 1, 2, 3, 5]])
    assert copy_start_mask(two, n=3).nonzero()[:, 1].tolist() == [4, 8]
    assert not copy_start_mask(torch.arange(30)[None], n=3).any()
    # the copy region must lie in the continuation: a copy of the prompt is not penalised
    assert not copy_start_mask(torch.tensor([[1, 2, 3, 1, 2, 3]]), n=3, start=3).any()


def test_loss_from_logits_matches_and_is_zero_without_mask(tiny_random_lm):
    seqs = torch.randint(0, tiny_random_lm.config.vocab_size, (2, 12))
    mask = torch.zeros_like(seqs, dtype=torch.bool)
    mask[0, 5:9] = True
    a = unlikelihood_loss(tiny_random_lm, seqs, mask)
    b = unlikelihood_from_logits(tiny_random_lm(input_ids=seqs[:, :-1]).logits, seqs, mask)
    torch.testing.assert_close(a, b)
    assert a.item() > 0
    assert unlikelihood_loss(tiny_random_lm, seqs, torch.zeros_like(mask)).item() == 0.0


def test_unlikelihood_steps_lower_the_repeated_tokens(tiny_random_lm):
    """A randomly initialised model decoded greedily repeats itself; UL steps on its own continuations lower the
    probability of the tokens that repeated, and its greedy continuation changes."""
    torch.manual_seed(0)
    lm = tiny_random_lm
    prefix = torch.randint(0, lm.config.vocab_size, (8, 4))
    seqs0 = greedy_continue(lm.eval(), prefix, 40)
    mask0 = repeated_ngram_mask(seqs0, n=3, start=4)
    assert mask0.float().mean() > 0.3, "the fixture should loop"

    def p_repeated() -> float:
        with torch.no_grad():
            logp = lm.eval()(input_ids=seqs0[:, :-1]).logits.log_softmax(-1).gather(-1, seqs0[:, 1:, None])[..., 0]
        return logp.exp()[mask0[:, 1:]].mean().item()

    before = p_repeated()
    opt = torch.optim.Adam(lm.parameters(), lr=3e-3)
    for _ in range(20):
        seqs = greedy_continue(lm.eval(), prefix, 40)
        lm.train()
        loss = unlikelihood_loss(lm, seqs, repeated_ngram_mask(seqs, n=3, start=4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert p_repeated() < before / 2
    assert not torch.equal(greedy_continue(lm.eval(), prefix, 40), seqs0)


def test_selection_prefers_checkpoints_under_the_loop_bar():
    tc = TrainConfig(train_depths=1, select_max_loop=0.3)
    good_loss_loops = {"valid_main": 2.0, "valid_d1": 2.0, "valid_loop": 0.6}
    worse_loss_ok = {"valid_main": 2.5, "valid_d1": 2.5, "valid_loop": 0.2}
    assert selection_score(worse_loss_ok, tc) < selection_score(good_loss_loops, tc)
    less_loopy = {**good_loss_loops, "valid_loop": 0.4}
    assert selection_score(less_loopy, tc) < selection_score(good_loss_loops, tc)
    assert selection_score({"valid_main": 2.0, "valid_d1": 1.0}, tc) == 3.0  # no monitor: plain loss
