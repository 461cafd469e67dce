"""Sampling with plain tensors: greedy, top-k, top-p, healing masks, seeds."""
import torch

from webapp.protocol import SamplingSettings
from webapp.sampling import choose_next_tokens, keep_top_k, keep_top_p

INF = float("-inf")


def test_greedy_takes_the_largest_logit():
    logits = torch.tensor([[0.1, 3.0, 2.0], [5.0, 1.0, 0.0]])
    assert choose_next_tokens(logits, SamplingSettings(temperature=0)).tolist() == [1, 0]


def test_top_k_keeps_k():
    kept = keep_top_k(torch.tensor([[1.0, 4.0, 3.0, 2.0]]), 2)
    assert kept.tolist() == [[INF, 4.0, 3.0, INF]]
    assert keep_top_k(torch.tensor([[1.0, 2.0]]), 0).tolist() == [[1.0, 2.0]]


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = keep_top_p(probs.log(), 0.8)
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]
    kept = keep_top_p(probs.log(), 0.81)
    assert torch.isfinite(kept).tolist() == [[True, True, True, False]]
    kept = keep_top_p(probs.log(), 0.1)  # the top token always survives
    assert torch.isfinite(kept).tolist() == [[True, False, False, False]]


def test_healing_mask_constrains_rows_that_have_one():
    logits = torch.tensor([[9.0, 1.0, 0.0], [9.0, 1.0, 0.0]])
    allowed = torch.tensor([[False, False, True], [False, False, False]])
    assert choose_next_tokens(logits, SamplingSettings(temperature=0), allowed=allowed).tolist() == [2, 0]


def test_sampling_never_picks_outside_top_k():
    logits = torch.tensor([[5.0, 4.9, 0.0, 0.0, 0.0]]).expand(200, -1)
    picked = choose_next_tokens(logits, SamplingSettings(temperature=2.0, top_k=2, top_p=1.0),
                                torch.Generator().manual_seed(0))
    assert set(picked.tolist()) == {0, 1}


def test_same_seed_same_draws():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1))
    settings = SamplingSettings(temperature=1.0, top_k=0, top_p=1.0)
    first = choose_next_tokens(logits, settings, torch.Generator().manual_seed(42))
    again = choose_next_tokens(logits, settings, torch.Generator().manual_seed(42))
    assert first.tolist() == again.tolist()
