"""kvcache.Stack with plain tensors: requests join, write, leave and move, and every row keeps exactly its own keys."""
import random
from types import SimpleNamespace

import pytest
import torch
from transformers import DynamicCache

from webapp.generation import kvcache

LAYERS, HEADS, WIDTH = 2, 2, 4


class Holder(SimpleNamespace):
    """A request in the stack: its cache, and the keys it should hold (what was written for it, in order)."""

    def __init__(self, rows, length, rng, uneven=False):
        truth = torch.tensor([[rng.random() for _ in range(length)] for _ in range(rows)])
        super().__init__(truth=truth, cache=cache_of(truth, uneven))


def heads(index, uneven):
    """Key heads of layer `index`: the same in every layer, or (`uneven`) more in each, as the stack must also take."""
    return HEADS + index if uneven else HEADS


def cache_of(truth, uneven=False):
    """A batch of `truth`'s rows, every key and value of a position equal to that position's number (+1 for values)."""
    cache = DynamicCache()
    for index in range(LAYERS):
        states = truth[:, None, :, None].expand(-1, heads(index, uneven), -1, WIDTH).contiguous()
        cache.update(states + index, states + index + 1, index)
    return cache


def write_a_step(stack, rng, columns=1):
    """What a forward pass does to the stack: every row gets `columns` more positions, with values of its own."""
    rows = sum(member.rows for member in stack.members)
    new = torch.tensor([[rng.random() for _ in range(columns)] for _ in range(rows)])
    merged = stack.cache()
    for index, layer in enumerate(merged.layers):
        states = new[:, None, :, None].expand(-1, layer.keys.shape[1], columns, WIDTH)
        layer.update(states + index, states + index + 1)
    stack.advance(columns)
    for member in stack.members:
        holder, part = member.holder, new[member.first:member.first + member.rows]
        holder.truth = torch.cat([holder.truth, part], dim=1)
        holder.cache = stack.cut(holder)
        for index, layer in enumerate(holder.cache.layers):  # views of its rows and columns in every layer
            expected = holder.truth[:, None, :, None].expand(-1, layer.keys.shape[1], -1, WIDTH) + index
            assert torch.equal(layer.keys, expected) and torch.equal(layer.values, expected + 1)
            assert layer.keys.untyped_storage().data_ptr() == stack.keys[index].untyped_storage().data_ptr()


def assert_holds_exactly(stack):
    for member in stack.members:
        holder = member.holder
        rows, length = slice(member.first, member.first + member.rows), holder.truth.shape[1]
        assert member.length == length
        for index in range(LAYERS):
            keys, values = stack.keys[index][rows], stack.values[index][rows]
            expected = holder.truth[:, None, :, None].expand(-1, keys.shape[1], -1, WIDTH) + index
            assert torch.equal(keys[:, :, stack.end - length:stack.end], expected)
            assert torch.equal(values[:, :, stack.end - length:stack.end], expected + 1)
            assert not keys[:, :, stack.begin:stack.end - length].any(), "padding is zeros (0 x garbage is NaN)"


def test_a_newcomer_longer_than_what_is_left_after_moving_to_the_front_gets_a_bigger_stack(monkeypatch):
    monkeypatch.setattr(kvcache, "SPARE_POSITIONS", 16)
    rng = random.Random(0)
    long_one, short_one = Holder(1, 20, rng), Holder(2, 5, rng)
    stack = kvcache.Stack.holding(None, [long_one, short_one])
    for _ in range(2):
        write_a_step(stack, rng)
    stack = kvcache.Stack.holding(stack, [short_one])  # the long one leaves: 15 columns in front are free
    while stack.end + 1 <= stack.keys[0].shape[2]:
        write_a_step(stack, rng)
    newcomer = Holder(3, 30, rng)  # longer than the short one's 21 columns
    stack = kvcache.Stack.holding(stack, [short_one, newcomer])
    assert_holds_exactly(stack)
    write_a_step(stack, rng)
    assert_holds_exactly(stack)


@pytest.mark.parametrize("uneven", [False, True], ids=["layers alike (one buffer)", "layers of their own shapes"])
@pytest.mark.parametrize("columns", [1, 3], ids=["a column a step", "a column per option (three) a step"])
def test_any_sequence_of_joins_leaves_and_steps_keeps_every_row_exactly(monkeypatch, columns, uneven):
    monkeypatch.setattr(kvcache, "SPARE_POSITIONS", 8)
    monkeypatch.setattr(kvcache, "SPARE_ROWS", 2)
    rng = random.Random(1)
    stack, writing, last, moves = None, [], None, 0
    for _ in range(1500):
        if writing and rng.random() < 0.25:  # someone finishes or is cancelled
            writing.pop(rng.randrange(len(writing)))
        if len(writing) < 6 and rng.random() < 0.35:  # someone new presses Tab
            writing.insert(rng.randrange(len(writing) + 1),
                           Holder(rng.randint(1, 3), rng.randint(1, 40), rng, uneven))
        if not writing:
            stack = None
            continue
        stack = kvcache.Stack.holding(stack, writing, columns)
        assert (stack.all_keys is None) == uneven, "one buffer for all layers where their shapes are alike"
        moves, last = moves + (stack.keys[0] is not last), stack.keys[0]
        assert {id(member.holder) for member in stack.members} == {id(holder) for holder in writing}
        assert_holds_exactly(stack)
        write_a_step(stack, rng, columns)
        assert_holds_exactly(stack)
    assert moves > 3, "the run went through several stacks (rows and columns ran out)"


def test_a_lent_layer_writes_after_what_it_lent_in_place_and_over_it_only_in_new_buffers():
    layer = kvcache.GrowingLayer()
    states = torch.arange(5.0)[None, None, :, None].expand(1, 1, 5, 2)
    layer.update(states, states + 1)
    buffer = layer.buffers[0]
    lent = kvcache.views_of(SimpleNamespace(layers=[layer]))  # what the options read
    kvcache.lend(SimpleNamespace(layers=[layer]))
    layer.update(states[:, :, :1] + 10, states[:, :, :1] + 11)  # after the lent positions: in place
    assert layer.buffers[0] is buffer and layer.get_seq_length() == 6
    layer.crop(-2)  # the next prompt differs from the fifth position on: keep four
    layer.update(states[:, :, :1] + 20, states[:, :, :1] + 21)
    assert layer.buffers[0] is not buffer, "writing over a lent position goes to new buffers"
    assert torch.equal(lent.layers[0].keys, states), "what was lent is unchanged"
    assert layer.keys[0, 0, :, 0].tolist() == [0, 1, 2, 3, 20]


def test_a_new_stack_keeps_rows_for_those_coming_and_a_spare_one_is_taken_when_big_enough():
    rng = random.Random(2)
    first = [Holder(1, 10, rng) for _ in range(2)]
    stack = kvcache.Stack.holding(None, first, coming=20)  # a class: two read, twenty more being read
    assert stack.keys[0].shape[0] >= 22
    write_a_step(stack, rng)
    everyone = first + [Holder(1, rng.randint(3, 10), rng) for _ in range(20)]
    assert kvcache.Stack.holding(stack, everyone) is stack, "the twenty joined without a new stack"
    write_a_step(stack, rng)
    for holder in everyone:  # the class has finished: each keeps its own copy
        holder.cache = stack.cut(holder, separate=True)
    spare, rows = stack, stack.keys[0].shape[0]
    next_class = [Holder(rng.randint(1, 3), rng.randint(1, 30), rng) for _ in range(4)]
    again = kvcache.Stack.holding(None, next_class, spare=spare)
    assert again is spare and again.holders == next_class, "the next class's stack is the same memory"
    assert_holds_exactly(again)
    write_a_step(again, rng)
    assert_holds_exactly(again)
    assert kvcache.Stack.holding(None, [Holder(rows + 1, 5, rng)], spare=spare) is not spare, "too few rows"
    assert kvcache.Stack.holding(None, [Holder(1, 5, rng, uneven=True)], spare=spare) is not spare, "other shapes"
