"""Attention over a prompt held once for all its options, plus each option's own keys and values.

A request's options share their prompt. Copying its keys and values into every option's
row made each decoding step read them n times (and copy them n times when the options
first wrote); at 300 tokens that was a third of a class's step. Here the prompt stays one
row per request, and attention is computed in two parts: every option's queries against
its request's prompt (the options as extra query rows, one pass per request), and each
row's queries against its own written positions. Each part returns its softmax
normaliser (log-sum-exp), which merges the two exactly, as flash attention merges blocks.

The model calls `attention` through transformers' AttentionInterface; a forward pass
that is given a `SharedPrompt` (the keyword `shared_prompt`) attends this way, any other
pass (reading a prompt, scoring, beam search) is plain SDPA.
"""
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

IMPLEMENTATION = "tabwrite_shared_prompt"


class SharedPrompt:
    """The prompts of one forward pass: one row per request, and which batch rows (options) read each."""

    def __init__(self, keys, values, visible, slots=None, slot_of_row=None):
        """Per layer `keys`/`values` [requests, kv heads, columns, dim]; `visible` [requests, options, columns] bool.

        Without `slots` the batch rows are the requests' options in order, the same
        number each. Otherwise `slots` [requests, options] names the batch row of each
        request's option (any row where a request has fewer options) and `slot_of_row`
        [rows] the slot each batch row reads from.
        """
        self.keys, self.values = keys, values
        self.visible = visible
        self.slots, self.slot_of_row = slots, slot_of_row
        self.calls = 0  # layers that attended this way: none means the model ignored the AttentionInterface
        self._masks = {}

    def prompt_mask(self, repeats, length, dtype):
        """The additive mask for [requests, kv heads, options x repeats x length] query rows, or None if none hides."""
        key = ("prompt", repeats, length)
        if key not in self._masks:
            requests, options, columns = self.visible.shape
            hidden = ~self.visible[:, :, None, None, :].expand(requests, options, repeats, length, columns)
            self._masks[key] = (_additive(hidden.reshape(requests, 1, -1, columns), dtype)
                                if hidden.any() else None)
        return self._masks[key]

    def own_mask(self, mask, repeats, length, columns, dtype):
        """The model's mask for the rows' own positions, additive, for [rows, kv heads, repeats x length] queries.

        None from the model means nothing is hidden but the future, as SDPA's `is_causal`.
        """
        if mask is None and length == 1:
            return None
        key = ("own", repeats, length)
        if key not in self._masks and mask is None:  # each of the last `length` positions sees those up to it
            mask = torch.ones((length, columns), dtype=torch.bool, device=self.visible.device)
            mask = mask.tril(columns - length)[None, None]
        if key not in self._masks:
            # a hidden position gets the dtype's minimum, not -inf: a row with nothing to see must come out
            # with a tiny log-sum-exp (weight 0 in the merge), where -inf gives 0, a weight of 1
            additive = _additive(~mask, dtype) if mask.dtype == torch.bool else mask.to(dtype)
            self._masks[key] = additive.repeat(1, 1, repeats, 1) if length > 1 else additive
        return self._masks[key]


def install(model):
    """Make the model's attention go through `attention` (plain SDPA for a pass without a SharedPrompt)."""
    AttentionInterface.register(IMPLEMENTATION, attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
    model.config._attn_implementation = IMPLEMENTATION


def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, shared_prompt=None, **kwargs):
    """An AttentionInterface function: query [rows, heads, length, dim] over the shared prompt and each row's own."""
    if shared_prompt is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    shared_prompt.calls += 1
    rows, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    repeats = heads // kv_heads  # grouped-query attention: these query heads read one key head, as extra query rows
    on_prompt, prompt_lse = _over_prompt(shared_prompt, module.layer_idx, query, kv_heads, repeats, scaling)
    own_mask = shared_prompt.own_mask(attention_mask, repeats, length, key.shape[-2], query.dtype)
    on_own, own_lse = attend(query.reshape(rows, kv_heads, repeats * length, dim), key, value, own_mask, scaling)
    most = torch.maximum(prompt_lse, own_lse)
    prompt_weight = (prompt_lse - most).exp_()[..., None]
    own_weight = (own_lse - most).exp_()[..., None]
    merged = (on_prompt * prompt_weight + on_own * own_weight) / (prompt_weight + own_weight)
    return merged.to(query.dtype).reshape(rows, heads, length, dim).transpose(1, 2), None


def _over_prompt(shared, layer, query, kv_heads, repeats, scaling):
    """Every row's queries over its request's prompt: (output [rows, kv heads, repeats x length, dim], log-sum-exp)."""
    rows, _, length, dim = query.shape
    requests = shared.visible.shape[0]
    options = shared.visible.shape[1]
    if shared.slots is not None:
        query = query.index_select(0, shared.slots.reshape(-1))
    # [requests x options, kv heads x repeats, length, dim] -> [requests, kv heads, options x repeats x length, dim]
    grouped = query.reshape(requests, options, kv_heads, repeats * length, dim).transpose(1, 2)
    grouped = grouped.reshape(requests, kv_heads, options * repeats * length, dim)
    mask = shared.prompt_mask(repeats, length, query.dtype)
    out, lse = attend(grouped, shared.keys[layer], shared.values[layer], mask, scaling)
    out = out.reshape(requests, kv_heads, options, repeats * length, dim).transpose(1, 2)
    out = out.reshape(requests * options, kv_heads, repeats * length, dim)
    lse = lse.reshape(requests, kv_heads, options, repeats * length).transpose(1, 2)
    lse = lse.reshape(requests * options, kv_heads, repeats * length)
    if shared.slot_of_row is not None:
        out, lse = out.index_select(0, shared.slot_of_row), lse.index_select(0, shared.slot_of_row)
    return out, lse


def attend(query, key, value, mask, scale):
    """Softmax attention that also returns each query row's log-sum-exp (float32), the weight it merges with.

    On the CPU this is the fused flash kernel; elsewhere the same in plain float32 operations.
    """
    if query.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, attn_mask=mask,
                                                                           scale=scale)
    return attend_plainly(query, key, value, mask, scale)


def attend_plainly(query, key, value, mask, scale):
    """`attend` in plain float32 operations, for any device."""
    scale = scale if scale is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + mask.float()
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.matmul(torch.softmax(scores, dim=-1), value.float())
    return out.to(query.dtype), lse


def _additive(hidden, dtype):
    """0 where a position is seen, the dtype's minimum where `hidden`."""
    return torch.zeros(hidden.shape, dtype=dtype, device=hidden.device).masked_fill_(hidden, torch.finfo(dtype).min)
