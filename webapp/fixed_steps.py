"""Decoding steps of fixed shapes, so that a GPU can replay each as one captured CUDA graph.

A decoding step of GPT-2 large is some 1,500 small kernels. On a GPU each takes a few
microseconds to run and about as long again to launch from Python, so a step is
bound by the launches, not by the GPU. A CUDA graph records a step's launches once and
replays them in one call, but only for the same shapes, at the same addresses, with
nothing read back by the host in between. The engine's batched step (shared_prompt's
OptionRows over a kvcache.Stack) changes shape every step: the batch grows and shrinks
as requests join and leave, and the columns attended grow by the options' tokens. Here
the same step is made of fixed shapes:

- the batch's requests are padded to a bucket (1, 2, 4, 8, ... up to the stack's rows),
  each with as many query rows as the step's most options; padding rows feed a token
  nobody sees and write columns nobody reads;
- attention runs over every column of the Stack, whose buffers start zeroed (a hidden
  column weighs 0, and 0 x garbage could be NaN) and stay where they are; the step's
  mask shows each option its prompt and its own columns, as before;
- the step's new keys and values are written at columns held in a tensor (`index_copy_`),
  not at Python integers a graph would have baked in.

A graph is captured per (bucket, options) on first use and replayed after; a new stack
(more rows or columns than the old one had) means new addresses, so its steps capture
again. No graph's logits are used unchecked: the step a graph is captured in uses the
eager warm-up's, and its first replay, on new inputs, is checked against the same step
run eagerly; a graph that replays something else (a value baked in at capture, an
operation that misbehaves when captured) ends capturing for good, and the steps go on
eagerly. Where there is no CUDA (a CPU; the tests) the same fixed-shape step runs
eagerly, which is what lets a CPU check that it computes what the engine's step
computes and that it never reads a value back mid-step (tests/test_fixed_steps.py).
"""
import copy
import logging

import torch
from transformers.cache_utils import DynamicLayer

from . import kvcache
from .shared_prompt import OptionRows, bypassed_the_interface

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)  # batch sizes (requests) a step is padded to
COLUMN_QUANTUM = 256  # a new stack's columns are a multiple of this, so that it lasts a while
WARM_UPS = 2  # eager runs before a capture (cuBLAS and the allocator set themselves up on first use)
# how far a graph's first replay may stray from the eager step, as a share of the largest logit: replayed launches
# do the same arithmetic (were a library to pick other kernels when captured, float16 rounding would differ by a few
# units of 0.1 %), while a graph computing another step (inputs baked in, a column missed) moves logits by whole units
REPLAY_TOLERANCE = 1e-2

log = logging.getLogger(__name__)


def bucket(requests):
    """The smallest batch size of BUCKETS that holds `requests` (past the largest, `requests` itself)."""
    return next((size for size in BUCKETS if size >= requests), requests)


class FixedRoom(kvcache.Room):
    """Stacks for fixed-shape steps: zeroed, rows a whole bucket, columns a whole number of quanta."""

    zeroed = True

    def rows(self, rows):
        return bucket(rows)

    def columns(self, end, columns_a_step):
        needed = super().columns(end, columns_a_step)
        return -(-needed // COLUMN_QUANTUM) * COLUMN_QUANTUM


class FixedLayer(DynamicLayer):
    """A cache layer over a stack's first rows and all its columns; a step writes at `columns` (a tensor)."""

    regroup = None  # the pass's OptionRows.regroup: what makes a step's states its requests' new columns

    def __init__(self, keys, values, columns):
        super().__init__()
        self.keys, self.values, self.columns = keys, values, columns
        self.device, self.is_initialized = keys.device, True

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys.index_copy_(2, self.columns, self.regroup(key_states))
        self.values.index_copy_(2, self.columns, self.regroup(value_states))
        return self.keys, self.values


class Shape:
    """One (bucket, options) step over one stack: its inputs at fixed addresses, and its graph once captured."""

    def __init__(self, stack, requests, options, pad_id):
        """Inputs for `requests` (a bucket) x `options` query rows over every column of `stack`."""
        device = stack.keys[0].device
        queries, self.options = requests * options, options
        self.ids = torch.full((queries, 1), pad_id, dtype=torch.long, device=device)
        self.positions = torch.zeros((queries, 1), dtype=torch.long, device=device)
        self.visible = torch.zeros((requests, options, stack.keys[0].shape[2]), dtype=torch.bool, device=device)
        self.columns = torch.zeros(options, dtype=torch.long, device=device)
        self.cache = copy.copy(stack.template)
        self.cache.layers = [FixedLayer(keys[:requests], values[:requests], self.columns)
                             for keys, values in zip(stack.keys, stack.values)]
        self.pad_id = pad_id
        self.graph = None
        self.output = None  # [queries, vocab]: where the graph's replays write the logits
        self.checked = False  # whether a replay was found to compute what the eager step computes

    def fill(self, stack, feed, positions, option_rows):
        """Copy a step's inputs in: `feed` and `positions` per batch row, the mask, where its columns go."""
        slots = option_rows.slot_of_row
        if slots is None:  # the rows are every request's options in order, as many each: the first slots
            slots = torch.arange(feed.shape[0], device=feed.device)
        self.ids.fill_(self.pad_id).index_copy_(0, slots, feed.reshape(-1, 1))
        self.positions.zero_().index_copy_(0, slots, positions.reshape(-1, 1))
        requests, _, width = option_rows.visible.shape  # width: the stack's columns in use and the step's
        self.visible.zero_()[:requests, :, stack.begin:stack.begin + width] = option_rows.visible
        # a padding request's queries see one column of their (unused, finite) row: a query that sees nothing can be
        # NaN in float16 (every score at the mask's minimum overflows), and its keys and values, NaN too, would stay
        # in the row for a later member, where 0 x NaN spoils a hidden column
        self.visible[requests:, :, 0] = True
        self.columns.copy_(torch.arange(stack.end, stack.end + self.options, device=self.columns.device))
        return slots

    def run(self, model):
        """The model's pass over the fixed inputs: its logits [queries, vocab]."""
        rows = OptionRows(self.visible)  # a fresh one: it keeps the pass's mask, made from `visible` as it is now
        for layer in self.cache.layers:
            layer.regroup = rows.regroup
        out = model(input_ids=self.ids, position_ids=self.positions, cache=self.cache, use_cache=True,
                    option_rows=rows)
        if rows.calls == 0:
            raise bypassed_the_interface()
        return out.logits[:, -1, :]


class GraphMismatch(RuntimeError):
    """A captured graph's replay computed other logits than the same step run eagerly."""


class FixedSteps:
    """Runs the engine's batched decoding steps in fixed shapes: replayed CUDA graphs, or eagerly (`capture` off)."""

    room = FixedRoom()

    def __init__(self, model, pad_id, capture):
        self.model, self.pad_id, self.capture = model, pad_id, capture
        self._stack = None
        self._shapes = {}  # (requests bucket, options) -> Shape, for self._stack
        self._pool = None  # the graphs' memory, shared between them
        # what happened so far (tests and benchmarks read them): graphs captured and replayed, eager steps (those that
        # check a graph's first replay among them), checks
        self.captures = self.replays = self.runs = self.checks = 0
        self.failure = None  # why capturing was given up, if it was

    def logits(self, stack, feed, positions, option_rows):
        """A step's logits [rows, vocab] for the batch's rows; their keys and values are written into `stack`.

        `feed` and `positions` hold each batch row's token and position; `option_rows`
        is the step's OptionRows (engine._option_rows), over the stack's columns in use.
        """
        if stack is not self._stack:  # graphs point into the old stack's buffers: they go with it
            self._stack, self._shapes, self._pool = stack, {}, None
        requests, options, _ = option_rows.visible.shape
        key = (min(bucket(requests), stack.keys[0].shape[0]), options)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = Shape(stack, *key, self.pad_id)
        slots = shape.fill(stack, feed, positions, option_rows)
        if not self.capture:
            logits = self._run_eagerly(shape)
        else:
            try:
                logits = self._capture(shape) if shape.graph is None else self._replay(shape, slots)
            except Exception as error:  # capturing failed, or a graph replays something else: no graphs from now on
                self._give_up_capturing(error)
                logits = self._run_eagerly(shape)  # this very step again (it writes the same keys and values)
        return logits.index_select(0, slots)

    def shapes(self):
        """The (requests bucket, options) shapes made for the current stack."""
        return sorted(self._shapes)

    def _give_up_capturing(self, error):
        """Say once why steps cannot be replayed as graphs; every later step runs eagerly, in fixed shapes.

        A model whose pass cannot be captured (an operation that reads a value back, one
        CUDA graphs do not support) still serves, only slower.
        """
        self.capture, self.failure = False, f"{type(error).__name__}: {error}"
        self._shapes, self._pool = {}, None  # drop the graphs; eager shapes are made afresh
        log.warning("decoding steps cannot be captured as CUDA graphs (%s); they run without", self.failure)

    def _run_eagerly(self, shape):
        """Run `shape`'s step as it is, uncaptured (its inputs filled); its logits."""
        self.runs += 1
        return shape.run(self.model)

    def _capture(self, shape):
        """Warm `shape`'s step up and record it as a graph; this step's logits are the last warm-up's.

        The warm-up runs compute this very step (writing the same keys and values each
        time); recording runs nothing, so the graph's logits are first used, and checked,
        at its first replay.
        """
        logits = self._warm_up(shape)
        shape.graph, shape.output = self._record(shape)
        self.captures += 1
        return logits

    def _replay(self, shape, slots):
        """Replay `shape`'s graph; at its first replay, check its logits (the batch's `slots`) against an eager run."""
        self.replays += 1
        shape.graph.replay()
        if shape.checked:
            return shape.output
        self.checks += 1
        replayed, eager = shape.output.index_select(0, slots), self._run_eagerly(shape).index_select(0, slots)
        stray = (replayed.float() - eager.float()).abs().max()
        if not stray <= REPLAY_TOLERANCE * eager.float().abs().max():  # (NaN strays too)
            raise GraphMismatch(f"a replayed step's logits differ from the eager step's by up to {float(stray):.3g}")
        shape.checked = True
        return shape.output

    def _warm_up(self, shape):
        """Run `shape`'s step WARM_UPS times on a side stream, as CUDA graph capture asks; the last run's logits."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARM_UPS):
                logits = shape.run(self.model)
        torch.cuda.current_stream().wait_stream(side)
        return logits

    def _record(self, shape):
        """Capture `shape`'s step as a CUDA graph: the graph, and the tensor its replays write the logits in."""
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = shape.run(self.model)
        return graph, output
