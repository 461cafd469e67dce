"""KV caches for the engine: layers that grow in place, several generations stacked in one batch, and cut apart.

transformers' DynamicLayer concatenates at every step, copying the whole cache. These
layers keep spare room instead, and a stack of several clients' caches is kept while the
same clients step on together. The engine only calls the functions here; none of them
knows about options, sampling or text.
"""
import copy
from dataclasses import dataclass

from transformers.cache_utils import DynamicLayer

SPARE_POSITIONS = 64  # room a growing cache layer keeps for the next steps' keys and values


def cache_bytes(cache):
    """Memory held by a cache's keys and values."""
    if cache is None:
        return 0
    return sum(t.numel() * t.element_size() for layer in cache.layers
               for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None)


def shallow_copy(cache):
    """A second Cache over the same tensors; its layers can be replaced without touching the first's."""
    twin = copy.copy(cache)
    twin.layers = [copy.copy(layer) for layer in cache.layers]
    return twin


@dataclass
class Stack:
    """Several generations' caches stacked in one batch (with spare room), and the views each generation was given."""

    cache: object
    members: list
    cuts: list

    def holds(self, generations):
        """True when exactly these generations step again, in this order, each with the views it was given."""
        storage = self.cache.layers[0].keys.untyped_storage().data_ptr()
        return (len(generations) == len(self.members)
                and all(g is member and g.cache is cut and cut.layers[0].keys.untyped_storage().data_ptr() == storage
                        for g, member, cut in zip(generations, self.members, self.cuts)))


def merge_caches(caches, pads):
    """Caches to be stacked along the batch, each left-padded by its entry in `pads` (the mask hides the padding).

    The stacking happens inside the forward pass, together with the new token's keys and
    values, so that each step copies the caches once rather than twice.
    """
    merged = shallow_copy(caches[0])
    merged.layers = [StackingLayer(index, caches, pads) for index in range(len(caches[0].layers))]
    return merged


def cut_cache(merged, rows, pad, separate):
    """One generation's cache back out of a stacked one: its rows without its left padding (views unless `separate`)."""
    own = shallow_copy(merged)
    own.layers = []
    for stacked in merged.layers:
        layer = copy.copy(stacked.template)  # an ordinary layer of the model's own kind
        layer.keys = stacked.keys[rows, :, pad:, :]
        layer.values = stacked.values[rows, :, pad:, :]
        own.layers.append(layer)
    return compact(own) if separate else own


def compact(cache):
    """The cache with its own memory: views into a stacked batch or a growing buffer become copies."""
    if cache is not None:
        for layer in cache.layers:
            if layer.keys is not None:
                layer.keys, layer.values = _own(layer.keys), _own(layer.values)
            if isinstance(layer, GrowingLayer):
                layer.buffers = None  # the spare room goes with it
    return cache


def growing(cache):
    """`cache` with layers that write each step's keys and values into spare room instead of copying them all.

    A layer that already grows in its own buffers is kept as it is; any other (a DynamicLayer,
    or a copy whose keys were replaced) becomes a GrowingLayer that owns no buffer yet.
    """
    cache.layers = [layer if isinstance(layer, GrowingLayer) and layer.owns_its_keys() else GrowingLayer.adopt(layer)
                    for layer in cache.layers]
    return cache


class GrowingLayer(DynamicLayer):
    """A layer whose keys and values are the front of bigger buffers, so that a decoding step writes one position.

    DynamicLayer concatenates: every step copies the whole cache of every layer (a fifth of
    a step's time at 300 tokens). Here a step writes in place while there is room, and
    moves to buffers SPARE_POSITIONS longer when there is not. A layer writes only into
    buffers it allocated and whose front its keys still are (after crop, say), never into
    tensors it was given.
    """

    @classmethod
    def adopt(cls, layer):
        """The same keys and values (no copy), in a layer that grows."""
        grown = cls()
        grown.__dict__.update(layer.__dict__)
        grown.buffers = None
        return grown

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        end = length + key_states.shape[-2]
        if not self._has_room(key_states, length, end):
            self.buffers = tuple(_room_for(states, current, length, end)
                                 for states, current in ((key_states, self.keys), (value_states, self.values)))
        keys, values = self.buffers
        keys[:, :, length:end] = key_states
        values[:, :, length:end] = value_states
        self.keys, self.values = keys[:, :, :end], values[:, :, :end]
        return self.keys, self.values

    def owns_its_keys(self):
        """True when the keys and values are the front of this layer's own buffers (so it may write after them)."""
        if self.buffers is None or self.keys is None or not self.keys.numel():
            return False
        keys, values = self.buffers
        return (self.keys.data_ptr() == keys.data_ptr() and self.keys.stride() == keys.stride()
                and self.values.data_ptr() == values.data_ptr())

    def _has_room(self, key_states, length, end):
        return (self.owns_its_keys() and length > 0 and self.buffers[0].shape[-2] >= end
                and self.buffers[0].shape[0] == key_states.shape[0])


def _room_for(states, current, length, end):
    """A new buffer [batch, heads, end + SPARE_POSITIONS, dim] holding the first `length` positions of `current`."""
    batch, heads, _, width = states.shape
    buffer = states.new_empty((batch, heads, end + SPARE_POSITIONS, width))
    if length:
        buffer[:, :, :length] = current
    return buffer


def _own(tensor):
    """`tensor` in memory of its own: a view into a bigger one (even a contiguous view) is copied."""
    if tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size():
        return tensor.contiguous()
    return tensor.contiguous() if not tensor.is_contiguous() else tensor.clone()


class StackingLayer(GrowingLayer):
    """One layer of several generations' caches, stacked (left-padded) when the forward pass appends to it.

    The stack keeps spare room: while the same generations go on stepping together, later
    steps write into it in place (as GrowingLayer does) instead of stacking again.
    """

    def __init__(self, index, caches, pads):
        super().__init__()
        self.template = caches[0].layers[index]
        self.parts = [(cache.layers[index].keys, cache.layers[index].values, pad) for cache, pad in zip(caches, pads)]
        self.length = pads[0] + self.parts[0][0].shape[-2]  # the longest cache, which has no padding
        self.device = self.parts[0][0].device
        self.is_initialized = True
        self.buffers = None

    def get_seq_length(self):
        return self.length if self.keys is None else self.keys.shape[-2]

    def update(self, key_states, value_states, *args, **kwargs):
        """Write every part and the new states into one buffer; padding is zeroed (0 weight × garbage is NaN)."""
        if self.parts is None:  # stacked already: write on in the spare room
            return super().update(key_states, value_states)
        batch, heads, new, width = key_states.shape
        keys = key_states.new_empty((batch, heads, self.length + new + SPARE_POSITIONS, width))
        values = value_states.new_empty((batch, heads, self.length + new + SPARE_POSITIONS, value_states.shape[-1]))
        row = 0
        for part_keys, part_values, pad in self.parts:
            rows = slice(row, row + part_keys.shape[0])
            row = rows.stop
            keys[rows, :, :pad].zero_()
            values[rows, :, :pad].zero_()
            keys[rows, :, pad:self.length] = part_keys
            values[rows, :, pad:self.length] = part_values
        end = self.length + new
        keys[:, :, self.length:end] = key_states
        values[:, :, self.length:end] = value_states
        self.buffers = (keys, values)
        self.keys, self.values, self.parts = keys[:, :, :end], values[:, :, :end], None
        return self.keys, self.values
