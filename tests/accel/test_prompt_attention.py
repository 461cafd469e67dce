"""Attention while reading prompts on the AMX tiles (webapp/accel/prompt_attention.py, csrc/prompt_attention.c), and
without them in float32 from FLOAT32_QUERIES queries on.

Its outputs against PyTorch's SDPA on the same bfloat16 tensors (both sum bfloat16
products in float32), then through the engine against float32's predictions.
"""
import copy

import pytest
import torch
from conftest import run
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from webapp.accel import native, prompt_attention
from webapp.accel.lowbit import pack_model
from webapp.generation import shared_prompt
from webapp.generation.engine import Engine
from webapp.models.loading import wrap_model
from webapp.web.protocol import SamplingSettings

needs_tiles = pytest.mark.skipif(not native.tiles(), reason="this CPU has no AMX tiles (or Linux lends none)")

TEXT = ("The river ran quietly past the old mill, where the children of the village gathered every summer "
        "to watch the boats and tell each other stories about the people who lived upstream.")


class Layer(torch.nn.Module):
    """What the attention functions read of a model's attention module."""

    def __init__(self, groups, is_causal=True):
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, is_causal


def tensors(batch, heads, kv_heads, queries, keys, dim, seed=0):
    """q [batch, heads, queries, dim] as a transposed view (as the model makes it), k and v with spare room."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, queries, heads, dim, generator=generator).bfloat16().transpose(1, 2)
    room = torch.randn(2, batch, kv_heads, keys + 7, dim, generator=generator).bfloat16()
    return q, room[0, :, :, :keys], room[1, :, :, :keys]


def both(query, key, value, mask, layer, scale=None):
    """Ours and SDPA's outputs [batch, queries, heads, dim] in float32."""
    ours = prompt_attention.attend(layer, query, key, value, mask, scale, 0.0, {})
    assert ours is not None
    theirs, _ = sdpa_attention_forward(layer, query, key, value, mask, scaling=scale)
    return ours.float(), theirs.float()


def close(ours, theirs):
    # a bfloat16 step is 2^-8 of a value: outputs within two of them
    assert (ours - theirs).abs().max() <= 2 ** -6 * theirs.abs().max(), (ours - theirs).abs().max()


@needs_tiles
@pytest.mark.parametrize("heads, kv_heads, dim", [(9, 3, 64), (4, 4, 32), (4, 1, 128), (20, 20, 64)])
@pytest.mark.parametrize("queries", [1, 16, 37, 300])
def test_a_causal_prompt_as_pytorch_attends(heads, kv_heads, dim, queries):
    query, key, value = tensors(2, heads, kv_heads, queries, queries, dim)
    ours, theirs = both(query, key, value, None, Layer(heads // kv_heads), scale=dim ** -0.5)
    close(ours, theirs)


@needs_tiles
@pytest.mark.parametrize("queries, held", [(23, 40), (5, 300), (64, 1)])
def test_new_tokens_after_a_cache_through_a_mask(queries, held):
    """A prompt's unread tokens after its cached ones, two prompts left-padded as the engine reads them."""
    query, key, value = tensors(2, 9, 3, queries, held + queries, 64, seed=1)
    keys = held + queries
    causal = torch.arange(keys)[None, :] <= torch.arange(queries)[:, None] + held
    mask = causal[None, None].repeat(2, 1, 1, 1)
    mask[1, ..., :held // 2 + 1] = False  # the second prompt's padding: hidden from all its queries
    mask[1, 0, :3] = False  # and its first queries are padding too: they see nothing (SDPA gives NaN, we zeros)
    ours, theirs = both(query, key, value, mask, Layer(3))
    sees = mask[:, 0].any(-1)  # [batch, queries]
    close(ours[sees], theirs[sees])
    assert torch.equal(ours[~sees], torch.zeros_like(ours[~sees]))


@needs_tiles
def test_a_mask_shared_by_the_batch_and_attention_that_is_not_causal():
    query, key, value = tensors(3, 4, 2, 20, 50, 64, seed=2)
    mask = torch.rand(1, 1, 20, 50, generator=torch.Generator().manual_seed(3)) > 0.3
    mask[..., 0] = True  # every query sees something
    close(*both(query, key, value, mask, Layer(2)))
    close(*both(query, key, value, None, Layer(2, is_causal=False)))


def test_what_it_does_not_compute_goes_to_sdpa():
    query, key, value = tensors(1, 4, 4, 20, 20, 64)
    layer = Layer(1)
    additive = torch.zeros(1, 1, 20, 20, dtype=torch.bfloat16)
    for refused in [dict(query=query.float(), key=key.float(), value=value.float()), dict(attention_mask=additive),
                    dict(dropout=0.1), dict(kwargs={"sliding_window": 8}), dict(kwargs={"softcap": 30.0}),
                    dict(kwargs={"s_aux": torch.zeros(4)}), dict(kwargs={"output_attentions": True}),
                    dict(query=query[..., :48], key=key[..., :48], value=value[..., :48])]:
        arguments = dict(module=layer, query=query, key=key, value=value, attention_mask=None, scaling=None,
                         dropout=0.0, kwargs={})
        arguments.update(refused)
        assert prompt_attention.attend(**arguments) is None, refused


def divergence(expected, actual):
    """KL(expected || actual) of next-token distributions, in nats."""
    expected, actual = (torch.log_softmax(values.float(), dim=-1) for values in (expected, actual))
    return (expected.exp() * (expected - actual)).sum(-1).item()


@needs_tiles
def test_the_engine_reads_prompts_on_the_tiles_as_close_to_float32_as_sdpa(monkeypatch, embedded):
    """The embedded model in int4 reads texts with our attention and with SDPA's: predictions as close to float32's;
    two prompts read together (left-padded, one after its cached start) continue the same."""
    model = copy.deepcopy(embedded.model)
    pack_model(model)
    engine = Engine(wrap_model(model, embedded.tokenizer, "embedded-int4"))
    calls = []
    ours = prompt_attention.attend
    settings = SamplingSettings(n=2, mode="greedy", length=8, stop_at="length", max_time=600)  # tokens compared
    texts = [TEXT, " ".join([TEXT] * 9)]
    predicted, continued = {}, {}
    for kind in ("ours", "sdpa"):
        monkeypatch.setattr(prompt_attention, "attend", (lambda *a: calls.append(1) or ours(*a)) if kind == "ours"
                            else (lambda *a: None))
        calls.clear()
        predicted[kind] = [engine.next_token_logits(text)[0] for text in texts]
        prefix, _ = engine.prime(TEXT, settings)
        started = engine.start_many([(engine.prepare(TEXT + " And then", settings), prefix),
                                     (engine.prepare("Once upon a time " + TEXT, settings), None)])
        continued[kind] = [option.tokens for generation, _ in started for option in generation.options]
        assert bool(calls) == (kind == "ours")
    with torch.inference_mode():
        for index, text in enumerate(texts):
            exact = embedded.model(input_ids=torch.tensor([engine.vocab.ids(text)])).logits[0, -1]
            mine, theirs = divergence(exact, predicted["ours"][index]), divergence(exact, predicted["sdpa"][index])
            assert mine < 0.01 and mine < 2 * theirs + 0.002, (mine, theirs)
    assert continued["ours"] == continued["sdpa"]
    finished, _ = run(engine, TEXT, settings)
    assert all(len(option.tokens) == 8 for option in finished.options)


@pytest.mark.parametrize("mask", [None, "boolean", "additive"])
def test_without_tiles_a_long_prompt_attends_in_float32_and_a_short_one_in_bfloat16(monkeypatch, mask):
    """shared_prompt.attention without the tiles: from FLOAT32_QUERIES queries on, SDPA on float32 copies."""
    monkeypatch.setattr(native, "tiles", lambda: False)
    seen = []
    original = shared_prompt.sdpa_attention_forward
    monkeypatch.setattr(shared_prompt, "sdpa_attention_forward",
                        lambda module, query, *args, **kwargs: seen.append(query.dtype) or original(module, query,
                                                                                                  *args, **kwargs))
    layer = Layer(3)
    for queries in (prompt_attention.FLOAT32_QUERIES - 1, prompt_attention.FLOAT32_QUERIES, 300):
        query, key, value = tensors(1, 9, 3, queries, queries + 5, 64)
        attention_mask = None
        if mask:  # the new tokens after 5 held: each sees those and itself and what came before it
            allowed = torch.ones(queries, queries + 5, dtype=torch.bool)
            allowed[:, 5:] = torch.ones(queries, queries, dtype=torch.bool).tril()
            attention_mask = allowed if mask == "boolean" else torch.zeros(allowed.shape).masked_fill(
                ~allowed, torch.finfo(torch.bfloat16).min).bfloat16()
            attention_mask = attention_mask[None, None]
        else:
            key, value = key[:, :, :queries], value[:, :, :queries]
        out, _ = shared_prompt.attention(layer, query, key, value, attention_mask, scaling=0.125)
        assert out.dtype == torch.bfloat16 and out.shape == (1, queries, 9, 64)
        exact, _ = original(layer, query.float(), key.float(), value.float(),
                            attention_mask.float() if mask == "additive" else attention_mask, scaling=0.125)
        close(out.float(), exact)
        if queries >= prompt_attention.FLOAT32_QUERIES:  # float32 throughout, then one rounding to bfloat16
            assert torch.equal(out, exact.bfloat16())
    assert seen == [torch.bfloat16, torch.float32, torch.float32]
