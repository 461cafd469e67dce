"""Pick the next token of every option from the model's logits."""
import torch

from .settings import BEAM, GREEDY


def choose_next_tokens(logits, settings, generator=None, allowed=None):
    """Return one token id per row of `logits` [rows, vocab], following `settings`.

    `allowed` is an optional boolean mask of the same shape (token healing); rows
    where it is all False are left unconstrained.
    """
    logits = logits.float()
    if allowed is not None:
        usable = allowed.any(dim=-1, keepdim=True)
        # healing: tokens that do not spell out the removed text become impossible
        logits = logits.masked_fill(usable & ~allowed, float("-inf"))
    if is_greedy(settings):
        return logits.argmax(dim=-1)
    # one draw per row among the candidates only: with top-k 40 that is 40 numbers, not the whole vocabulary
    ids, probabilities = candidates(logits, settings)
    picked = torch.multinomial(probabilities, num_samples=1, generator=generator)
    return ids.gather(-1, picked).squeeze(-1)


def is_greedy(settings):
    """True when every choice is simply the likeliest token (greedy mode, or temperature 0)."""
    return settings.mode == GREEDY or settings.temperature == 0


def reshape(logits, settings):
    """The probabilities sampling draws from [rows, vocab]: temperature, then top-k, then top-p.

    Greedy puts all the probability on the likeliest token; beam search ranks beams by
    the model's own probabilities, so it leaves them as they are.
    """
    logits = logits.float()
    if settings.mode == BEAM:
        return torch.softmax(logits, dim=-1)
    if is_greedy(settings):
        return torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
    ids, probabilities = candidates(logits, settings)
    return torch.zeros_like(logits).scatter_(-1, ids, probabilities)


def candidates(logits, settings):
    """The tokens sampling may pick and their probabilities, (ids, probabilities), both [rows, candidates].

    Temperature divides the logits (< 1 sharpens the distribution, > 1 flattens it); top-k
    keeps the k likeliest tokens; top-p keeps the smallest set of those whose probabilities
    reach p. Tokens cut by top-p stay in the set with probability 0.
    """
    vocab = logits.shape[-1]
    # chosen and sorted before the temperature divides (it keeps the order): with top-k only k values a row are divided
    if 0 < settings.top_k < vocab:
        logits, ids = torch.topk(logits, settings.top_k, dim=-1)  # sorted, likeliest first
    elif settings.top_p < 1.0:
        logits, ids = torch.sort(logits, descending=True, dim=-1)
    else:
        ids = torch.arange(vocab, device=logits.device).expand_as(logits)
    probabilities = torch.softmax(keep_top_p(logits.float() / settings.temperature, settings.top_p), dim=-1)
    return ids, _finite(probabilities, logits)


def _finite(probabilities, logits):
    """`probabilities`, with any row that is not a distribution (logits that were infinite or NaN) put wholly on
    its likeliest token: one option's odd values never fail the draw of the others sampled with it."""
    broken = ~torch.isfinite(probabilities).all(dim=-1) | ~(probabilities.sum(dim=-1) > 0)
    if broken.any():
        likeliest = torch.nan_to_num(logits[broken].float(), nan=float("-inf")).argmax(dim=-1)
        probabilities[broken] = torch.nn.functional.one_hot(likeliest, probabilities.shape[-1]).to(probabilities.dtype)
    return probabilities


def keep_top_p(logits, p):
    """Keep the smallest set of likeliest tokens whose probabilities add up to at least p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probabilities = torch.softmax(sorted_logits, dim=-1)
    # drop a token when the tokens before it already reach p; the top token always stays
    drop_sorted = (probabilities.cumsum(dim=-1) - probabilities) >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
