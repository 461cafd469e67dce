"""Pick the next token of every option from the model's logits."""
import torch

from .protocol import BEAM, GREEDY


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
    # one draw per row from the reshaped distribution
    return torch.multinomial(reshape(logits, settings), num_samples=1, generator=generator).squeeze(-1)


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
    # temperature: divide the logits, < 1 sharpens the distribution, > 1 flattens it
    logits = logits / settings.temperature
    logits = keep_top_k(logits, settings.top_k)
    logits = keep_top_p(logits, settings.top_p)
    return torch.softmax(logits, dim=-1)


def keep_top_k(logits, k):
    """Set every logit below the k-th largest of its row to -inf (k=0 keeps all)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def keep_top_p(logits, p):
    """Keep the smallest set of likeliest tokens whose probabilities add up to at least p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    # drop a token when the tokens before it already reach p; the top token always stays
    drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
