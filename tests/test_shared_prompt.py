"""Attention over a prompt held once plus each row's own positions equals plain attention over both, row by row."""
from types import SimpleNamespace

import pytest
import torch

from webapp import shared_prompt

DIM = 8


def make_case(options, prompt_lengths, own_length, heads, kv_heads, length, generator):
    """Random prompts (one per request, left-padded), own keys per row, and what each row sees of both."""
    requests, most = len(options), max(options)
    width = max(prompt_lengths)
    prompt_keys = torch.randn(requests, kv_heads, width, DIM, generator=generator)
    prompt_values = torch.randn(requests, kv_heads, width, DIM, generator=generator)
    visible = torch.zeros(requests, most, width, dtype=torch.bool)
    for request, (count, prompt_length) in enumerate(zip(options, prompt_lengths)):
        visible[request, :, width - prompt_length:] = True
    visible[0, 1, -1] = False  # an option that spelled a healed token differently does not see the read-ahead one
    rows = sum(options)
    own_keys = torch.randn(rows, kv_heads, own_length, DIM, generator=generator)
    own_values = torch.randn(rows, kv_heads, own_length, DIM, generator=generator)
    own_seen = torch.ones(rows, own_length, dtype=torch.bool)
    own_seen[0, :2] = False  # left padding
    own_seen[-1, :] = False  # a row that has nothing of its own to see (a finished option riding along)
    own_seen[-1, -length:] = length > 1  # ... unless it is reading several positions of its own (causal below)
    query = torch.randn(rows, heads, length, DIM, generator=generator)
    return SimpleNamespace(options=options, prompt_keys=prompt_keys, prompt_values=prompt_values, visible=visible,
                           own_keys=own_keys, own_values=own_values, own_seen=own_seen, query=query)


def model_mask(case):
    """The model's bool mask for the rows' own positions: [rows, 1, length, columns], causal over the last ones."""
    rows, _, length, _ = case.query.shape
    columns = case.own_keys.shape[2]
    causal = torch.ones(length, columns, dtype=torch.bool).tril(columns - length)
    return (case.own_seen[:, None, None, :] & causal[None, None]).expand(rows, 1, length, columns)


def expected(case, mask):
    """Row by row: plain softmax attention over the prompt's positions it sees, then its own."""
    outputs, row = [], 0
    repeats = case.query.shape[1] // case.own_keys.shape[1]
    for request, count in enumerate(case.options):
        for option in range(count):
            seen = case.visible[request, option]
            keys = torch.cat([case.prompt_keys[request][:, seen], case.own_keys[row]], dim=1)
            values = torch.cat([case.prompt_values[request][:, seen], case.own_values[row]], dim=1)
            sees = torch.cat([seen[None].expand(mask.shape[2], -1)[:, seen], mask[row, 0]], dim=1)
            out = torch.nn.functional.scaled_dot_product_attention(
                case.query[row:row + 1].double(), keys.repeat_interleave(repeats, dim=0)[None].double(),
                values.repeat_interleave(repeats, dim=0)[None].double(), attn_mask=sees[None, None], scale=0.3)
            outputs.append(out[0].transpose(0, 1))
            row += 1
    return torch.stack(outputs)


def shared_for(case, uniform):
    if uniform:
        return shared_prompt.SharedPrompt([case.prompt_keys], [case.prompt_values], case.visible)
    most, slots, slot_of_row, row = max(case.options), [], [], 0
    for request, count in enumerate(case.options):
        slots.append(list(range(row, row + count)) + [row] * (most - count))
        slot_of_row += [request * most + option for option in range(count)]
        row += count
    return shared_prompt.SharedPrompt([case.prompt_keys], [case.prompt_values], case.visible,
                                      torch.tensor(slots), torch.tensor(slot_of_row))


@pytest.mark.parametrize("plainly", [False, True], ids=["flash kernel", "plain operations"])
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (6, 2)], ids=["multi-head", "grouped-query"])
@pytest.mark.parametrize("options", [(3, 3), (3, 1, 2)], ids=["as many options each", "fewer options for some"])
@pytest.mark.parametrize("length", [1, 3], ids=["a decoding step", "several own positions read at once"])
def test_attention_over_a_shared_prompt_equals_plain_attention_over_prompt_and_own_positions(
        monkeypatch, plainly, heads, kv_heads, options, length):
    if plainly:
        monkeypatch.setattr(shared_prompt, "attend", shared_prompt.attend_plainly)
    case = make_case(options, [7, 4, 5][:len(options)], 6, heads, kv_heads, length, torch.Generator().manual_seed(0))
    module = SimpleNamespace(layer_idx=0)
    mask = model_mask(case)
    shared = shared_for(case, uniform=len(set(options)) == 1)
    out, weights = shared_prompt.attention(module, case.query, case.own_keys, case.own_values, mask, scaling=0.3,
                                           shared_prompt=shared)
    assert weights is None and shared.calls == 1
    assert out.shape == (sum(options), length, heads, DIM)
    torch.testing.assert_close(out.double(), expected(case, mask), atol=1e-5, rtol=1e-5)


def test_without_a_mask_from_the_model_own_positions_are_seen_causally():
    case = make_case((2,), [5], 4, 4, 4, 4, torch.Generator().manual_seed(1))
    case.own_seen[:] = True
    case.visible[:] = True
    module = SimpleNamespace(layer_idx=0)
    shared = shared_prompt.SharedPrompt([case.prompt_keys], [case.prompt_values], case.visible)
    out, _ = shared_prompt.attention(module, case.query, case.own_keys, case.own_values, None, scaling=0.3,
                                     shared_prompt=shared)
    torch.testing.assert_close(out.double(), expected(case, model_mask(case)), atol=1e-5, rtol=1e-5)


def test_in_bfloat16_the_merge_is_as_close_as_bfloat16_attention_itself():
    case = make_case((3, 3), [9, 6], 5, 6, 2, 1, torch.Generator().manual_seed(2))
    module = SimpleNamespace(layer_idx=0)
    mask = model_mask(case)
    halved = SimpleNamespace(**{name: value.bfloat16() if value.is_floating_point() else value
                                for name, value in vars(case).items() if isinstance(value, torch.Tensor)},
                             options=case.options)
    shared = shared_prompt.SharedPrompt([halved.prompt_keys], [halved.prompt_values], case.visible)
    out, _ = shared_prompt.attention(module, halved.query, halved.own_keys, halved.own_values, mask, scaling=0.3,
                                     shared_prompt=shared)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), expected(halved, mask), atol=2e-2, rtol=2e-2)


def test_a_pass_without_a_shared_prompt_is_plain_sdpa():
    generator = torch.Generator().manual_seed(3)
    query, key, value = (torch.randn(2, 4, 3, DIM, generator=generator) for _ in range(3))
    module = SimpleNamespace(layer_idx=0, is_causal=True)
    out, _ = shared_prompt.attention(module, query, key, value, None, scaling=0.3)
    plain = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True, scale=0.3)
    torch.testing.assert_close(out, plain.transpose(1, 2))
