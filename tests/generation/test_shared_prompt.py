"""Options as query rows of their request's one cache row: each attends to exactly the positions its mask shows."""
from types import SimpleNamespace

import pytest
import torch

from webapp.generation import shared_prompt

DIM = 8


def plain_attention(query, keys, values, seen, repeats):
    """One query position [heads, dim] over the key positions `seen` shows, in float64 (the reference)."""
    keys, values = keys[:, seen].repeat_interleave(repeats, dim=0), values[:, seen].repeat_interleave(repeats, dim=0)
    return torch.nn.functional.scaled_dot_product_attention(query[:, None].double(), keys.double(), values.double(),
                                                            scale=0.3)[:, 0]


def step_case(options, heads, kv_heads, generator, dtype=torch.float32):
    """Requests' rows [requests, kv heads, columns, dim], their options' queries (batch rows), what each sees."""
    requests, most, columns = len(options), max(options), 12
    keys = torch.randn(requests, kv_heads, columns, DIM, generator=generator).to(dtype)
    values = torch.randn(requests, kv_heads, columns, DIM, generator=generator).to(dtype)
    visible = torch.rand(requests, most, columns, generator=generator) < 0.6
    visible[:, :, 0] = True  # every option sees its prompt's first position at least
    query = torch.randn(sum(options), heads, 1, DIM, generator=generator).to(dtype)
    slots, slot_of_row, row = [], [], 0
    for request, count in enumerate(options):
        slots.append(list(range(row, row + count)) + [row] * (most - count))
        slot_of_row += [request * most + option for option in range(count)]
        row += count
    uniform = len(set(options)) == 1
    rows = (shared_prompt.OptionRows(visible) if uniform else
            shared_prompt.OptionRows(visible, torch.tensor(slots), torch.tensor(slot_of_row)))
    return SimpleNamespace(keys=keys, values=values, visible=visible, query=query, rows=rows, options=options)


def expected_step(case, repeats):
    out, row = [], 0
    for request, count in enumerate(case.options):
        for option in range(count):
            seen = case.visible[request, option]
            out.append(plain_attention(case.query[row, :, 0], case.keys[request], case.values[request], seen, repeats))
            row += 1
    return torch.stack(out)[:, None]  # [rows, 1, heads, dim], the model's layout


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (6, 2)], ids=["multi-head", "grouped-query"])
@pytest.mark.parametrize("options", [(3, 3), (3, 1, 2)], ids=["as many options each", "fewer options for some"])
def test_each_option_attends_to_exactly_what_its_mask_shows_of_its_requests_row(heads, kv_heads, options):
    case = step_case(options, heads, kv_heads, torch.Generator().manual_seed(0))
    out, weights = shared_prompt.attention(SimpleNamespace(layer_idx=0), case.query, case.keys, case.values, None,
                                           scaling=0.3, option_rows=case.rows)
    assert weights is None and case.rows.calls == 1
    torch.testing.assert_close(out.double(), expected_step(case, heads // kv_heads), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", [(3, 3), (3, 1, 2)], ids=["as many options each", "fewer options for some"])
def test_a_steps_new_keys_become_a_column_per_option_in_its_requests_row(options):
    case = step_case(options, 4, 2, torch.Generator().manual_seed(1))
    states = torch.arange(float(sum(options)))[:, None, None, None].expand(-1, 2, 1, DIM)  # row r's keys are all r
    columns = case.rows.regroup(states)
    assert columns.shape == (len(options), 2, max(options), DIM)
    row = 0
    for request, count in enumerate(options):
        for option in range(count):
            assert (columns[request, :, option] == row).all()
            row += 1


def test_re_reading_options_one_after_another_each_position_sees_what_its_mask_shows():
    generator = torch.Generator().manual_seed(2)
    positions, columns, heads, kv_heads = 5, 9, 6, 3
    query = torch.randn(1, heads, positions, DIM, generator=generator)
    keys, values = (torch.randn(1, kv_heads, columns, DIM, generator=generator) for _ in range(2))
    visible = torch.rand(1, positions, columns, generator=generator) < 0.5
    visible[:, :, 0] = True
    rows = shared_prompt.OptionRows(visible, rows_are_queries=False)
    assert rows.regroup(keys) is keys, "a request's positions are its row's columns as they are"
    out, _ = shared_prompt.attention(SimpleNamespace(layer_idx=0), query, keys, values, None, scaling=0.3,
                                     option_rows=rows)
    expected = torch.stack([plain_attention(query[0, :, p], keys[0], values[0], visible[0, p], heads // kv_heads)
                            for p in range(positions)])[None]
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_in_bfloat16_it_is_as_close_as_bfloat16_attention_itself():
    case = step_case((3, 1, 2), 6, 2, torch.Generator().manual_seed(3), dtype=torch.bfloat16)
    out, _ = shared_prompt.attention(SimpleNamespace(layer_idx=0), case.query, case.keys, case.values, None,
                                     scaling=0.3, option_rows=case.rows)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), expected_step(case, 3), atol=2e-2, rtol=2e-2)


def test_a_query_that_sees_nothing_is_never_nan():
    case = step_case((2,), 4, 4, torch.Generator().manual_seed(4))
    case.visible[0, 1] = False
    out, _ = shared_prompt.attention(SimpleNamespace(layer_idx=0), case.query, case.keys, case.values, None,
                                     scaling=0.3, option_rows=case.rows)
    assert not out.isnan().any()


def test_a_pass_without_option_rows_is_plain_sdpa():
    generator = torch.Generator().manual_seed(5)
    query, key, value = (torch.randn(2, 4, 3, DIM, generator=generator) for _ in range(3))
    module = SimpleNamespace(layer_idx=0, is_causal=True)
    out, _ = shared_prompt.attention(module, query, key, value, None, scaling=0.3)
    plain = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True, scale=0.3)
    torch.testing.assert_close(out, plain.transpose(1, 2))
