"""KV caches for the engine: layers that grow in place, several generations stacked in one batch, and cut apart.

transformers' DynamicLayer concatenates at every step, copying the whole cache. These
layers keep spare room instead, and several clients' caches live in one Stack that
requests join and leave between steps without copying the others. The engine only
calls what is here; none of it knows about options, sampling or text.
"""
import copy
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer

SPARE_POSITIONS = 64  # room a growing cache layer keeps for the next steps' keys and values
SPARE_ROWS = 8  # at least this many free rows in a new Stack, for the next requests to join without a copy
SPARE_STEP_COLUMNS = 8  # a write of up to this many columns is a step's (one per option), so room is kept for more


def cache_bytes(cache):
    """Memory held by a cache's keys and values."""
    if cache is None:
        return 0
    return sum(t.numel() * t.element_size() for layer in cache.layers
               for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None)


def cache_like(like, states):
    """A Cache of `like`'s kind whose layers hold the given (keys, values), one pair per layer, and own no buffer.

    Such layers never write into the tensors they were given: the first step that writes
    copies them into buffers of their own.
    """
    cache = copy.copy(like)
    cache.layers = []
    for layer, (keys, values) in zip(like.layers, states):
        part = GrowingLayer.adopt(layer)
        part.keys, part.values = keys, values
        cache.layers.append(part)
    return cache


def views_of(cache):
    """A second Cache over the same keys and values (no copy), in layers of its own that never write into them."""
    return cache_like(cache, ((layer.keys, layer.values) for layer in cache.layers))


def lend(cache):
    """Mark the positions a cache holds now as seen by others (through views_of): it will not write over them."""
    for layer in cache.layers:
        if isinstance(layer, GrowingLayer):
            layer.lent = layer.get_seq_length()


def left_padded(caches, width):
    """Batch-of-one caches (None for an empty one) stacked into one, each left-padded with zeros to `width`."""
    like = next(cache for cache in caches if cache is not None)
    states = []
    for index, template in enumerate(like.layers):
        pair = tuple(_buffer(part, len(caches), width).zero_()  # 0 weight x garbage would be NaN
                     for part in (template.keys, template.values))
        for row, cache in enumerate(caches):
            if cache is not None:
                for buffer, own in zip(pair, (cache.layers[index].keys, cache.layers[index].values)):
                    buffer[row, :, width - own.shape[-2]:] = own[0]
        states.append(pair)
    return cache_like(like, states)


def row_of(cache, row, start, middle, new):
    """One row's own cache (a batch of one) out of a batch read together: columns start..middle, then its `new` last."""
    def own(part):
        return torch.cat([part[row:row + 1, :, start:middle], part[row:row + 1, :, -new:]], dim=-2)

    return cache_like(cache, ((own(layer.keys), own(layer.values)) for layer in cache.layers))


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

    DynamicLayer concatenates: every step copies the whole cache of every layer, a cost
    that grows with the document. Here a step writes in place while there is room, and
    moves to buffers SPARE_POSITIONS longer when there is not. A layer writes only into
    buffers it allocated and whose front its keys still are (after crop, say), never into
    tensors it was given.
    """

    buffers = None  # (keys, values) this layer may write into; its keys and values are their front
    front = None  # the keys it last wrote or was given with its buffers: while they are still its keys, it owns them
    lent = 0  # positions others hold views of (see `lend`): a write there goes to new buffers instead
    regroup = None  # set for a pass whose batch rows are not this cache's rows: what makes its states columns here

    @classmethod
    def adopt(cls, layer):
        """The same keys and values (no copy), in a layer that grows."""
        # no __init__: every field it would set comes from `layer` (a class's step makes one a layer for each request)
        grown = cls.__new__(cls)
        grown.__dict__.update(layer.__dict__)
        grown.buffers, grown.front, grown.lent = None, None, 0
        return grown

    def use_buffers(self, keys, values, length):
        """Hold the first `length` positions of the buffers `keys` and `values` and write the next ones after them."""
        self.buffers = (keys, values)
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]
        self.front = self.keys

    def update(self, key_states, value_states, *args, **kwargs):
        if self.regroup is not None:
            key_states, value_states = self.regroup(key_states), self.regroup(value_states)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        (keys, values), length = self.room_for(key_states, value_states)
        end = length + key_states.shape[-2]
        keys[:, :, length:end] = key_states
        values[:, :, length:end] = value_states
        self.use_buffers(keys, values, end)
        return self.keys, self.values

    def room_for(self, key_states, value_states):
        """Buffers (keys, values) with room for the given states' columns after this layer's positions, and its length.

        They are this layer's own buffers when those have the room, else new ones holding its positions.
        """
        length = self.get_seq_length()
        end = length + key_states.shape[-2]
        if not self._has_room(key_states, length, end):
            buffers = tuple(_room_for(states, current, length, end)
                            for states, current in ((key_states, self.keys), (value_states, self.values)))
            self.use_buffers(*buffers, length)
            self.lent = 0  # nobody has seen the new buffers
        return self.buffers, length

    def crop(self, tokens_to_remove):
        owned = self.owns_its_keys()
        super().crop(tokens_to_remove)
        if owned:  # still the front of its buffers, only shorter
            self.front = self.keys

    def owns_its_keys(self):
        """True when the keys and values are the front of this layer's own buffers (so it may write after them)."""
        return self.buffers is not None and self.keys is not None and self.keys is self.front

    def _has_room(self, key_states, length, end):
        return (self.owns_its_keys() and length >= self.lent and self.buffers[0].shape[-2] >= end
                and self.buffers[0].shape[0] == key_states.shape[0])


def _room_for(states, current, length, end):
    """A new buffer [batch, heads, end + spare, dim] holding the first `length` positions of `current`.

    The spare room is SPARE_POSITIONS steps of as many columns as this write (a request's
    options write one each a step), or SPARE_POSITIONS after reading a prompt.
    """
    batch, heads, written, width = states.shape
    steps = written if written <= SPARE_STEP_COLUMNS else 1
    buffer = states.new_empty((batch, heads, end + SPARE_POSITIONS * steps, width))
    if length:
        buffer[:, :, :length] = current
    return buffer


def _own(tensor):
    """`tensor` in memory of its own: a view into a bigger one (even a contiguous view) is copied."""
    if tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size():
        return tensor.contiguous()
    return tensor.contiguous() if not tensor.is_contiguous() else tensor.clone()


@dataclass(eq=False)  # members are compared by identity, never by their holders' contents
class Member:
    """A holder (anything with a `cache`) in a Stack: its rows, its length, and the view it was last given."""

    holder: object
    first: int  # its first row
    rows: int
    length: int  # its cached positions; they end at the stack's `end`
    view: object = None  # layer 0's keys as cut for it: if the holder's cache still has them, it is still in place

    def in_place(self):
        cache = self.holder.cache
        return cache is not None and self.view is not None and cache.layers[0].keys is self.view


class Stack:
    """Several holders' caches in one batch that lives from step to step: [rows, heads, columns, dim] per layer.

    Every row ends at the same column (`end`), where the next step writes; a shorter cache
    is left-padded with zeros (the attention mask hides them). A newcomer's rows are copied
    in after the others; a leaver's rows are filled by moving up the rows after it. Only
    when rows or columns run out is memory allocated again: fresh memory is slow on a CPU
    (the first write to each page faults), and copying every client's cache whenever one
    joined made a class's step several times slower.
    """

    def __init__(self, like, rows, columns):
        """Buffers shaped after the cache `like` (a model's kind of cache), with room for `rows` x `columns`.

        Their memory holds whatever it held: padding is zeroed as it is used.
        """
        self.template = cache_like(like, ((None, None) for _ in like.layers))  # the kind of cache, holding nothing
        # every layer's keys (and values) in one buffer where their shapes allow: cutting a member's views out of all
        # layers is then one slice, not one a layer (30 clients, 30 layers: 1,800 slices a step)
        self.all_keys, self.keys = _layer_buffers([layer.keys for layer in like.layers], rows, columns)
        self.all_values, self.values = _layer_buffers([layer.values for layer in like.layers], rows, columns)
        self.begin = self.end = 0  # the columns in use: where the longest member starts, where every member ends
        self.members = []

    @classmethod
    def holding(cls, stack, holders, columns_a_step=1, coming=0, spare=None):
        """A Stack with every holder's cache in it (`stack` itself when it has room); members left out leave it.

        The room kept is for the coming step's `columns_a_step` columns in every row; a new
        stack gets spare rows and columns (rows for `coming` more holders besides), so that
        it lasts a while, or is `spare` (a stack nobody holds views of any more) when that is
        big enough.
        """
        members = stack.members if stack is not None else []
        staying = [m for m in members if m.in_place() and any(m.holder is h for h in holders)]
        for member in members:
            if member not in staying and member.in_place():
                compact(member.holder.cache)  # it leaves with its own copy: its rows are about to be reused
        joining = [h for h in holders if not any(m.holder is h for m in staying)]
        rows = sum(_rows(h.cache) for h in holders)
        longest = max([_length(h.cache) for h in joining], default=0)
        end = max(stack.end, longest) if staying else longest
        if staying and end == stack.end and stack._could_use_its_front(rows, longest, columns_a_step):
            stack._move_to_front()  # the columns ran out, but those before the longest member are free
            end = stack.end
        if stack is None or not stack._has_room(rows, end, columns_a_step) or (staying and end > stack.end):
            like = holders[0].cache
            # a spare stack will do with half the usual room for the steps to come
            if spare is not None and spare.fits(like, rows + coming, end + SPARE_POSITIONS // 2 * columns_a_step):
                stack = spare.emptied()
            else:
                rows += coming
                stack = cls(like, rows + max(SPARE_ROWS, rows // 2), end + SPARE_POSITIONS * columns_a_step)
            staying, joining = [], list(holders)
        stack._arrange(staying, joining, end)
        return stack

    def fits(self, like, rows, columns):
        """Whether this stack has `rows` x `columns` of room for caches shaped like `like`'s."""
        ours = self.keys[0]
        return (rows <= ours.shape[0] and columns <= ours.shape[2] and len(like.layers) == len(self.keys)
                and all(layer.keys.shape[1::2] == keys.shape[1::2] and layer.keys.dtype == keys.dtype
                        and layer.keys.device == keys.device for layer, keys in zip(like.layers, self.keys)))

    def bytes(self):
        """Memory its buffers take."""
        return sum(buffer.numel() * buffer.element_size() for buffer in self._buffers())

    def emptied(self):
        """This stack with no members, to be filled again."""
        self.members, self.begin, self.end = [], 0, 0
        return self

    @property
    def holders(self):
        """The holders in row order (the order of the batch)."""
        return [member.holder for member in self.members]

    @property
    def used_rows(self):
        """Rows the members take, from the first."""
        return sum(member.rows for member in self.members)

    @property
    def width(self):
        """Columns the batch attends over (the longest member's length)."""
        return self.end - self.begin

    def rows_of(self, holder):
        """The batch rows of `holder`."""
        member = self._member(holder)
        return slice(member.first, member.first + member.rows)

    def cache(self):
        """A Cache over the rows and columns in use; the forward pass writes the step's keys and values in place."""
        rows = self.used_rows
        merged = cache_like(self.template, self._views(slice(0, rows), self.begin, self.end))
        for layer, keys, values in zip(merged.layers, self.keys, self.values):
            # its spare room is the stack's: the step writes its columns there
            layer.use_buffers(keys[:rows, :, self.begin:], values[:rows, :, self.begin:], self.width)
        return merged

    def advance(self, columns=1):
        """Record that the forward pass wrote `columns` more positions for every row."""
        self.end += columns
        for member in self.members:
            member.length += columns

    def cut(self, holder, separate=False):
        """`holder`'s own cache back out of the batch: views into it, or a copy of its own when `separate`."""
        member = self._member(holder)
        own = cache_like(self.template, self._views(self.rows_of(holder), self.end - member.length, self.end))
        member.view = None if separate else own.layers[0].keys
        return compact(own) if separate else own

    def _buffers(self):
        """The stack's buffers: keys and values [layers, rows, heads, columns, dim], or each layer's of its own."""
        return [self.all_keys, self.all_values] if self.all_keys is not None else self.keys + self.values

    def _views(self, rows, start, end):
        """Every layer's (keys, values) of `rows` (a slice) and columns start..end: views into the buffers."""
        if self.all_keys is not None:
            return zip(self.all_keys[:, rows, :, start:end].unbind(0), self.all_values[:, rows, :, start:end].unbind(0))
        return ((keys[rows, :, start:end], values[rows, :, start:end]) for keys, values in zip(self.keys, self.values))

    def _member(self, holder):
        return next(member for member in self.members if member.holder is holder)

    def _has_room(self, rows, end, columns):
        return rows <= self.keys[0].shape[0] and end + columns <= self.keys[0].shape[2]  # the coming step's columns

    def _could_use_its_front(self, rows, longest, columns):
        """True when moving the columns in use to the front gives room for the next step and for `longest`.

        Once moved, the members' own views point at the old columns until they are cut
        again, so a move is only made when no new stack (copied from those views) follows.
        """
        return (rows <= self.keys[0].shape[0] and self.end + columns > self.keys[0].shape[2]
                and self.begin >= max(SPARE_POSITIONS // 4, columns) and longest <= self.end - self.begin)

    def _move_to_front(self):
        """Move the columns in use to the front of the buffers, in place (fresh memory would cost more).

        Chunks no wider than `begin` are moved left to right, so that none overwrites
        columns still to be read.
        """
        used = self.used_rows
        for start in range(self.begin, self.end, self.begin):
            stop = min(start + self.begin, self.end)
            for buffer in self._buffers():
                buffer[..., :used, :, start - self.begin:stop - self.begin, :] = buffer[..., :used, :, start:stop, :]
        self.begin, self.end = 0, self.end - self.begin

    def _arrange(self, staying, joining, end):
        """Move the staying members' rows up over the gaps, copy the newcomers in after them, zero new padding."""
        lengths = [m.length for m in staying] + [_length(h.cache) for h in joining]
        begin = end - max(lengths)
        used = self.used_rows
        if staying and begin < self.begin:  # columns that were no one's are now padding for those already here
            for buffer in self._buffers():
                buffer[..., :used, :, begin:self.begin, :].zero_()
        row = 0
        for member in staying:
            if member.first != row:  # someone before it left: move its rows (through a copy where they overlap)
                for buffer in self._buffers():
                    source = buffer[..., member.first:member.first + member.rows, :, begin:end, :]
                    overlapping = member.first < row + member.rows
                    buffer[..., row:row + member.rows, :, begin:end, :] = source.clone() if overlapping else source
                member.first = row
            row += member.rows
        self.members = list(staying)
        for holder in joining:
            self.members.append(self._copy_in(holder, row, begin, end))
            row += self.members[-1].rows
        self.begin, self.end = begin, end

    def _copy_in(self, holder, row, begin, end):
        """Copy a holder's cache into rows from `row`, ending at column `end`, zeros before it."""
        cache = holder.cache
        rows, length = _rows(cache), _length(cache)
        for layer, keys, values in zip(cache.layers, self.keys, self.values):
            for buffer, states in ((keys, layer.keys), (values, layer.values)):
                buffer[row:row + rows, :, begin:end - length].zero_()  # 0 weight x garbage would be NaN
                buffer[row:row + rows, :, end - length:end] = states
        return Member(holder, row, rows, length)


def _layer_buffers(states, rows, columns):
    """Buffers [rows, heads, columns, dim] shaped after each layer's `states`: (all of them in one, or None; each)."""
    if len({(part.shape[1], part.shape[3], part.dtype, part.device) for part in states}) > 1:
        return None, [_buffer(part, rows, columns) for part in states]  # layers of different shapes
    joined = _buffer(states[0], rows, columns, layers=len(states))
    return joined, list(joined.unbind(0))


def _buffer(states, rows, columns, layers=None):
    """A buffer [rows, heads, columns, dim] shaped after `states`; with `layers`, that many such in one."""
    batch, heads, _, width = states.shape
    shape = (rows, heads, columns, width) if layers is None else (layers, rows, heads, columns, width)
    return states.new_empty(shape)


def _rows(cache):
    return cache.layers[0].keys.shape[0]


def _length(cache):
    return cache.layers[0].keys.shape[-2]
