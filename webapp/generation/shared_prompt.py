"""One cache row per request: its prompt once, then its options' tokens, each option seeing the prompt and its own.

A request's options share their prompt. Copying its keys and values into a row per
option made every decoding step read them n times (and copy them n times when the
options first wrote), and gave the attention kernel n small problems where one would do.
Here a request's keys and values are one row: the prompt's positions, then the columns
its options write, n a step. Its options attend as extra query rows of that one row,
each through a mask that shows it the prompt and its own columns only, so a step reads
the prompt's keys and values once per request, not once per option.

The model calls `attention` through transformers' AttentionInterface. A forward pass
given an `OptionRows` (the keyword `option_rows`) attends this way, and its cache layers
write each option's new keys into its request's row (`regroup`); any other pass (reading
a prompt, scoring, beam search) is plain SDPA, or the prompt attention that the optional
speed package hands in (`use_prompt_attention`: accel/prompt_attention.py, on AMX tiles).
"""
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

IMPLEMENTATION = "tabwrite_option_rows"
# a faster attention for passes without OptionRows, handed in by accel.install (None: SDPA as transformers has it)
_prompt_attention = None


class OptionRows:
    """How one forward pass's queries map onto cache rows: one row per request, its options' queries on it."""

    def __init__(self, visible, slots=None, slot_of_row=None, rows_are_queries=True):
        """`visible` [requests, queries, columns] bool: what each query sees of its request's row after this pass.

        With `rows_are_queries` (a decoding step) the batch's rows are the requests'
        options, one position each, and each writes one column. Without `slots` they are
        in request order, as many per request; else `slots` [requests, queries] names the
        batch row of each query (any row where a request has fewer options) and
        `slot_of_row` [rows] the query each batch row is. Otherwise (re-reading a
        request's options) the batch rows are the requests and the positions its queries.
        """
        self.visible = visible
        self.slots, self.slot_of_row = slots, slot_of_row
        self.rows_are_queries = rows_are_queries
        self.calls = 0  # layers that attended this way: none means the model ignored the AttentionInterface
        self._masks = {}

    def regroup(self, states):
        """A step's new keys or values, [rows, kv heads, 1, dim], as the columns its requests' rows get."""
        if not self.rows_are_queries:
            return states
        if self.slots is not None:
            states = states.index_select(0, self.slots.reshape(-1))
        requests, queries, _ = self.visible.shape
        return states.reshape(requests, queries, states.shape[1], states.shape[-1]).transpose(1, 2)

    def attend(self, query, key, value, scale):
        """Attention of `query` (the model's layout) over the requests' rows, as [rows, length, heads, dim]."""
        requests, queries, _ = self.visible.shape
        heads, dim, kv_heads = query.shape[1], query.shape[-1], key.shape[1]
        repeats = heads // kv_heads  # grouped-query attention: the query heads reading one key head are extra rows
        if self.rows_are_queries:  # [rows, heads, 1, dim]
            if self.slots is not None:
                query = query.index_select(0, self.slots.reshape(-1))
            grouped = query.reshape(requests, queries, kv_heads, repeats, dim).transpose(1, 2)
        else:  # [requests, heads, queries, dim]
            grouped = query.reshape(requests, kv_heads, repeats, queries, dim).transpose(2, 3)
        grouped = grouped.reshape(requests, kv_heads, queries * repeats, dim)
        out = torch.nn.functional.scaled_dot_product_attention(grouped, key, value,
                                                               attn_mask=self.mask(repeats, query.dtype), scale=scale)
        out = out.reshape(requests, kv_heads, queries, repeats * dim).transpose(1, 2)
        if not self.rows_are_queries:
            return out.reshape(requests, queries, heads, dim)
        out = out.reshape(requests * queries, 1, heads, dim)
        return out if self.slot_of_row is None else out.index_select(0, self.slot_of_row)

    def mask(self, repeats, dtype):
        """The additive mask [requests, 1, queries x repeats, columns], made once a pass (every layer uses it)."""
        key = (repeats, dtype)
        if key not in self._masks:
            requests, queries, columns = self.visible.shape
            hidden = ~self.visible[:, :, None, :].expand(requests, queries, repeats, columns)
            # the dtype's minimum rather than -inf: a query that sees nothing (an unused one) is never NaN
            additive = torch.zeros(hidden.shape, dtype=dtype, device=hidden.device)
            self._masks[key] = additive.masked_fill_(hidden, torch.finfo(dtype).min).reshape(requests, 1, -1, columns)
        return self._masks[key]


def bypassed_the_interface():
    """The error for a pass given OptionRows whose model attended some other way (`OptionRows.calls` stayed 0)."""
    return RuntimeError("the model's attention does not go through transformers' AttentionInterface, so its options "
                        "cannot share their prompt's keys and values (shared_prompt.py)")


def install(model):
    """Make the model's attention go through `attention` (plain SDPA for a pass without OptionRows)."""
    AttentionInterface.register(IMPLEMENTATION, attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
    model.config._attn_implementation = IMPLEMENTATION


def use_prompt_attention(kernels):
    """Give passes without OptionRows to `kernels` first: its `attend` (None where it cannot) and `in_float32`.

    `kernels` is looked up at every call, so that its functions can be swapped (tests do).
    """
    global _prompt_attention
    _prompt_attention = kernels


def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, option_rows=None, **kwargs):
    """An AttentionInterface function: over the requests' rows when given OptionRows, else prompt attention or SDPA."""
    if option_rows is None:
        kernels = _prompt_attention
        ours = kernels.attend(module, query, key, value, attention_mask, scaling, dropout, kwargs) if kernels else None
        if ours is not None:  # on the AMX tiles (reading prompts, scoring a text)
            return ours, None
        if kernels and kernels.in_float32(query):
            mask = attention_mask.float() if attention_mask is not None and attention_mask.is_floating_point() \
                else attention_mask
            out, _ = sdpa_attention_forward(module, query.float(), key.float(), value.float(), mask, scaling=scaling,
                                            dropout=dropout, **kwargs)
            return out.to(query.dtype), None
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    option_rows.calls += 1
    return option_rows.attend(query, key, value, scaling), None
