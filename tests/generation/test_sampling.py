"""Sampling with plain tensors: greedy, top-k, top-p, healing masks, seeds."""
import torch

from webapp.generation.sampling import candidates, choose_next_tokens, keep_top_p, reshape
from webapp.web.protocol import SamplingSettings

INF = float("-inf")


def test_greedy_takes_the_largest_logit():
    logits = torch.tensor([[0.1, 3.0, 2.0], [5.0, 1.0, 0.0]])
    assert choose_next_tokens(logits, SamplingSettings(temperature=0)).tolist() == [1, 0]


def test_top_k_keeps_k_candidates_likeliest_first():
    ids, probabilities = candidates(torch.tensor([[1.0, 4.0, 3.0, 2.0]]), SamplingSettings(temperature=1.0, top_k=2,
                                                                                            top_p=1.0))
    assert ids.tolist() == [[1, 2]]
    assert torch.allclose(probabilities, torch.softmax(torch.tensor([[4.0, 3.0]]), dim=-1))
    ids, _ = candidates(torch.tensor([[1.0, 2.0]]), SamplingSettings(temperature=1.0, top_k=0, top_p=1.0))
    assert ids.tolist() == [[0, 1]], "top-k 0 keeps the whole vocabulary"


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


def test_reshaping_matches_a_hand_computation():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    # T = 0.5 squares the probabilities: .25 .09 .0225 .0025; top-k 3 drops the last;
    # top-p .9: after .25/.3625 = .69 the next reaches .94, so the third goes too; renormalized over .34
    shaped = reshape(logits, SamplingSettings(temperature=0.5, top_k=3, top_p=0.9))
    assert torch.allclose(shaped, torch.tensor([[0.25 / 0.34, 0.09 / 0.34, 0.0, 0.0]]), atol=1e-6)
    # T = 2 takes square roots: .7071 .5477 .3873 .2236 (sum 1.8657); top-k and top-p off
    shaped = reshape(logits, SamplingSettings(temperature=2.0, top_k=0, top_p=1.0))
    roots = torch.tensor([0.5, 0.3, 0.15, 0.05]).sqrt()
    assert torch.allclose(shaped, (roots / roots.sum())[None], atol=1e-6)
    assert reshape(logits, SamplingSettings(mode="greedy")).tolist() == [[1.0, 0.0, 0.0, 0.0]]
    beam = reshape(logits, SamplingSettings(mode="beam", temperature=0.5, top_k=1))
    assert torch.allclose(beam, torch.tensor([[0.5, 0.3, 0.15, 0.05]]), atol=1e-6), "beams use the model's own"


def test_greedy_mode_picks_the_largest_whatever_the_temperature():
    logits = torch.tensor([[0.1, 3.0, 2.0]])
    assert choose_next_tokens(logits, SamplingSettings(mode="greedy", temperature=2.0)).tolist() == [1]


def test_draws_follow_the_reshaped_distribution():
    """The sampler draws among the candidates only; its frequencies are those `reshape` shows (fixed seed)."""
    logits = torch.randn(1, 300, generator=torch.Generator().manual_seed(7)) * 3
    for settings in (SamplingSettings(temperature=0.8, top_k=5, top_p=0.9),
                     SamplingSettings(temperature=1.3, top_k=0, top_p=0.8),
                     SamplingSettings(temperature=1.0, top_k=0, top_p=1.0)):
        draws = choose_next_tokens(logits.expand(20000, -1), settings, torch.Generator().manual_seed(3))
        frequencies = torch.bincount(draws, minlength=300).float() / len(draws)
        shaped = reshape(logits, settings)[0]
        assert set(draws.tolist()) <= set(shaped.nonzero()[:, 0].tolist()), "nothing outside top-k / top-p"
        assert torch.allclose(frequencies, shaped, atol=0.015), settings
