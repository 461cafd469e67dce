"""Attention while reading prompts, on the CPU's AMX tiles (our `csrc/prompt_attention.c`).

Reading a prompt, PyTorch's attention is a large share of the time: its CPU kernel runs
far below what the AMX tiles can do. Ours multiplies 16 queries by 16 keys in one tile
product per 32 dimensions.
shared_prompt.attention sends it every pass without OptionRows (reading prompts, scoring
a text, beam search) that it can take: bfloat16 on the CPU, tiles granted (see
native.tiles), head size a multiple of 32 up to 128, a causal pass or a boolean mask, and
nothing asked that changes attention (dropout, soft-capping, a sliding window, sinks,
position biases). Anything else is PyTorch's SDPA, as before; without tiles, a long
prompt's bfloat16 attention is computed in float32 (`in_float32`), which is faster there.
"""
import torch

from . import native

# Without the tiles, PyTorch's CPU attention on bfloat16 runs slower than on the same values in float32, and the more
# so the longer the prompt; on a short one the conversions cost more than they save. From this many queries on,
# float32 (measured: docs/performance.md, "Thresholds").
FLOAT32_QUERIES = 256
# keyword arguments an attention call may carry that change nothing here (the cache's bookkeeping)
HARMLESS = frozenset({"position_ids", "cache_position", "past_key_values", "past_key_value", "use_cache",
                      "is_causal"})


def attend(module, query, key, value, attention_mask, scaling, dropout, kwargs):
    """[batch, queries, heads, dim] as transformers' sdpa_attention_forward returns it, or None where it cannot."""
    if not _takes(query, key, value, attention_mask, dropout, kwargs):
        return None
    batch, heads, queries, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    is_causal = kwargs.get("is_causal")
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = queries > 1 and attention_mask is None and is_causal  # as transformers' SDPA call decides it
    mask, mask_strides, mask_batch = None, torch.zeros(3, dtype=torch.int64), 0
    if attention_mask is not None:
        mask = attention_mask[:, 0]  # [batch or 1, queries, keys]
        mask_batch = mask.shape[0]
        mask_strides = torch.tensor([mask.stride(0), mask.stride(1), mask.stride(2)])
    out = torch.empty((batch, queries, heads, dim), dtype=torch.bfloat16)
    shape = torch.tensor([batch, heads, kv_heads, queries, keys, dim, int(causal), mask_batch])
    strides = [torch.tensor(tensor.stride()[:3]) for tensor in (query, key, value)]
    scale = scaling if scaling is not None else dim ** -0.5
    status = native.library().tabwrite_prompt_attention(
        query.data_ptr(), strides[0].data_ptr(), key.data_ptr(), strides[1].data_ptr(), value.data_ptr(),
        strides[2].data_ptr(), None if mask is None else mask.data_ptr(), mask_strides.data_ptr(), shape.data_ptr(),
        scale, out.data_ptr(), torch.get_num_threads())
    if status:
        raise MemoryError("our prompt attention could not allocate its working memory")
    return out


def _takes(query, key, value, attention_mask, dropout, kwargs):
    """Whether our kernel computes what transformers' SDPA call would for these arguments."""
    # anything more asked of attention (soft-capping, a window, sinks, weights returned), as StepPlan.takes asks it
    asked = {name for name, argument in kwargs.items() if argument is not None and argument is not False}
    if native.library() is None or not native.tiles() or dropout or asked - HARMLESS:
        return False
    tensors = (query, key, value)
    if any(t.dtype != torch.bfloat16 or t.device.type != "cpu" or t.dim() != 4 or t.stride(-1) != 1 for t in tensors):
        return False
    batch, heads, queries, dim = query.shape
    if dim % 32 or dim > 128 or key.shape != value.shape or key.shape[0] != batch or key.shape[-1] != dim:
        return False
    if heads % key.shape[1] or key.shape[2] < 1:
        return False
    if attention_mask is None:
        return True
    mask = attention_mask
    return (mask.dtype == torch.bool and mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[0] in (1, batch)
            and mask.shape[2] == queries and mask.shape[3] == key.shape[2] and mask.stride(-1) == 1)


def in_float32(query):
    """Whether SDPA should attend these bfloat16 CPU queries [batch, heads, queries, dim] in float32 (no tiles here)."""
    return (query.dtype == torch.bfloat16 and query.device.type == "cpu" and query.shape[2] >= FLOAT32_QUERIES
            and not native.tiles())
