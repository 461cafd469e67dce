"""Fixed-shape decoding steps (fixed_steps.py): the same tokens as the engine's own steps, in shapes a GPU can replay.

On this CPU they run eagerly (`graphs="eager"`): what CUDA graph capture needs of them
is checked here directly (every step of a shape runs the same operations on the same
shapes, reads no value back, and keeps its inputs where they were). The capture itself
needs a CUDA device: its test runs where there is one.
"""
import dataclasses

import pytest
import torch
import test_decoder_step
import test_engine
from conftest import build_tiny_gpt2, class_presses_tab, make_app, run
from torch.utils._python_dispatch import TorchDispatchMode

from webapp import fixed_steps, kvcache
from webapp.engine import Engine
from webapp.models import wrap_model
from webapp.protocol import SamplingSettings

GREEDY = SamplingSettings(n=1, temperature=0, length=8, stop_at="length", max_time=30)
SAMPLED = SamplingSettings(n=3, temperature=0.9, top_k=40, length=8, stop_at="length", max_time=30)
# operations whose result the host must wait for: a captured graph cannot contain them
READS_BACK = {"_local_scalar_dense", "is_nonzero", "item", "nonzero", "masked_select", "equal", "unique_dim",
              "_unique2", "unique_consecutive"}


@pytest.fixture(scope="module")
def plain(embedded):
    return Engine(embedded, graphs="off")


@pytest.fixture(scope="module")
def fixed(embedded):
    return Engine(embedded, graphs="eager")


def tokens(generations):
    return [[option.tokens for option in generation.options] for generation in generations]


def step_until_finished(engine, generations):
    """Step the unfinished ones together until all have finished; how many steps that took."""
    steps = 0
    while not all(generation.finished for generation in generations):
        engine.step_many([generation for generation in generations if not generation.finished])
        steps += 1
    return steps


def test_greedy_fixed_steps_equal_generate_for_a_class_batched_together(fixed):
    # (each re-spells its last word in one token, if at all: generate cannot do token healing)
    texts = ["The weather today is", "In 1969 the first people walked on the", "Dear diary,", "Once upon a time",
             "The committee decided"]
    settings = dataclasses.replace(GREEDY, length=10)
    generations = [fixed.start(text, settings)[0] for text in texts]
    step_until_finished(fixed, generations)
    for generation in generations:  # after the first token (token healing may choose it), generate's own
        prompt = torch.tensor([generation.prompt_ids + generation.options[0].tokens[:1]])
        expected = fixed.model.generate(prompt, max_new_tokens=9, do_sample=False,
                                        attention_mask=torch.ones_like(prompt))
        assert generation.options[0].tokens[1:] == expected[0, prompt.shape[1]:].tolist()
    assert fixed.fixed.runs > 0 and fixed._stack is None


def test_a_class_joining_and_leaving_writes_with_fixed_shapes_what_it_writes_with_the_engines_own(plain, fixed):
    texts = ["The weather today is", "In 1969 the first people walked on the", "Dear diary,",
             "My favourite recipe for a cold winter evening needs", "The committee decided"]
    settings = [dataclasses.replace(SAMPLED, n=n, length=length, seed=seed)
                for seed, (n, length) in enumerate([(2, 10), (3, 3), (1, 10), (3, 8), (2, 6)])]
    settings[4] = dataclasses.replace(GREEDY, n=2, length=6)
    written = []
    for engine in (plain, fixed):
        engine._spare = None  # stacks of this class's own (an earlier test's would have room to spare)
        recorded = record_logits(engine)
        first, short, late, longest, greedy = (engine.start(text, s)[0] for text, s in zip(texts, settings))
        engine.step_many([first, short])
        engine.step_many([first, short, late])  # a newcomer
        engine.step_many([first, short, late])  # the middle one ends here
        engine.step_many([first, late, longest, greedy])  # a longer prompt joins
        step_until_finished(engine, [first, late, longest, greedy])
        written.append((tokens([first, short, late, longest, greedy]), recorded))
        del engine._sample_many
    (plain_tokens, plain_logits), (fixed_tokens, fixed_logits) = written
    assert fixed_tokens == plain_tokens
    assert len(fixed_logits) == len(plain_logits) > 10
    for ours, theirs in zip(fixed_logits, plain_logits):
        assert torch.allclose(ours, theirs, atol=2e-4, rtol=0), (ours - theirs).abs().max()
    # the last stack's shapes: four requests, then two, then one (three were padded to four in it)
    assert fixed.fixed.shapes() == [(1, 3), (2, 3), (4, 3)]
    shapes = dict(fixed.fixed._shapes)
    next_class = [fixed.start(text, s)[0] for text, s in zip(texts[:3], settings)]
    step_until_finished(fixed, next_class)
    assert fixed._spare is fixed.fixed._stack, "the next class wrote in the same stack"
    assert all(fixed.fixed._shapes[key] is shape for key, shape in shapes.items()), \
        "and in the same shapes (on a GPU: the same captured graphs)"


def record_logits(engine):
    """Keep all logits sampled from (prompts' and steps'), from now on: instance attributes over Engine's methods."""
    kept, sample, sample_many = [], engine._sample, engine._sample_many
    engine._sample = lambda generation, logits, rows=None: (kept.append(logits.clone()),
                                                            sample(generation, logits, rows))[1]
    engine._sample_many = lambda generations, logits: (kept.append(logits.clone()), sample_many(generations, logits))[1]
    return kept


def test_a_cancelled_set_keeps_its_copy_while_fixed_steps_write_on_and_extends_like_one_longer_run(fixed):
    test_engine.test_a_cancelled_member_keeps_its_own_copy_while_others_write_on(fixed)


def test_when_the_stacks_columns_run_out_fixed_steps_go_on_in_place_and_in_a_bigger_stack(plain, fixed, monkeypatch):
    monkeypatch.setattr(kvcache, "SPARE_POSITIONS", 8)
    monkeypatch.setattr(fixed_steps, "COLUMN_QUANTUM", 32)
    texts = ["My favourite recipe for a cold winter evening needs a few things from the market", "Dear diary,"]
    settings = [dataclasses.replace(GREEDY, n=1, length=3), dataclasses.replace(GREEDY, n=2, length=30)]
    alone = [tokens([run(plain, text, s)[0]]) for text, s in zip(texts, settings)]
    fixed._spare = None  # stacks made for these two (not an earlier test's, with room to spare)
    long_one, short_one = (fixed.start(text, s)[0] for text, s in zip(texts, settings))
    stacks, moved = [], False
    while not short_one.finished:
        fixed.step_many([g for g in (long_one, short_one) if not g.finished])
        stack = fixed._stack
        if stack is not None:
            moved = moved or (stacks and stack is stacks[-1] and stack.begin == 0 and len(stack.members) == 1)
            if not stacks or stack is not stacks[-1]:
                stacks.append(stack)
                assert stack.keys[0].shape[2] % 32 == 0 and not stack.keys[0][:, :, stack.end:].any(), \
                    "a fixed-shape stack's columns are whole quanta, zeroed past what is written"
    assert moved, "the columns in use moved to the front of the same buffers"
    assert len(stacks) >= 2, "and, out of room, the rest went on in a bigger stack (new shapes)"
    assert [tokens([long_one]), tokens([short_one])] == alone


class ReadBacks(TorchDispatchMode):
    """Records every operation a pass runs (name, its tensors' shapes and dtypes, its other arguments) and read backs.

    A captured graph replays its operations with the arguments they had: an integer such
    as where a slice starts is baked in, so it must not change from step to step either.
    """

    def __init__(self):
        super().__init__()
        self.operations, self.read_backs = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        inputs = [(tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else a
                  for a in torch.utils._pytree.tree_leaves((args, kwargs))]
        self.operations.append((name, tuple(inputs)))
        bool_index = name == "index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                             for i in torch.utils._pytree.tree_leaves(args[1:]))
        if name in READS_BACK or bool_index:
            self.read_backs.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_a_fixed_step_repeats_the_same_operations_on_the_same_inputs_and_reads_nothing_back(embedded, architecture,
                                                                                            monkeypatch):
    loaded = (test_decoder_step.tiny_llama(embedded.tokenizer, 4, 2, 32, packed=False) if architecture == "llama" else
              wrap_model(build_tiny_gpt2(embedded.tokenizer), embedded.tokenizer, "tiny-gpt2", max_context=256))
    engine = Engine(loaded, graphs="eager")
    passes = {}  # id(shape) -> [(operations, read backs, the inputs' addresses)]
    step = fixed_steps.Shape.run

    def watched(shape, model):
        with ReadBacks() as seen:
            logits = step(shape, model)
        addresses = [t.data_ptr() for t in (shape.ids, shape.positions, shape.visible, shape.columns)]
        passes.setdefault(id(shape), []).append((seen.operations, seen.read_backs, addresses))
        return logits

    monkeypatch.setattr(fixed_steps.Shape, "run", watched)
    settings = dataclasses.replace(SAMPLED, length=12)
    texts = ["The weather today is", "Dear diary,", "In 1969 the first people walked on the"]
    generations = [engine.start(text, dataclasses.replace(settings, seed=i, length=4 + 4 * i))[0]
                   for i, text in enumerate(texts)]
    step_until_finished(engine, generations)  # columns grow, options and requests end: the shapes stay
    assert len(passes) == 3, "four rows (three requests) while all write, two once the first has ended, then one"
    assert sum(len(runs) for runs in passes.values()) == engine.fixed.runs == 11
    for runs in passes.values():
        operations, read_backs, addresses = runs[0]
        assert read_backs == []
        assert all(later == (operations, [], addresses) for later in runs[1:])
    assert any(name in ("index_copy", "index_copy_") for name, _ in operations), "columns written where a tensor says"


def test_the_graphs_setting(embedded, tiny):
    assert Engine(tiny).fixed is None, "auto: fixed shapes and graphs only on a CUDA device"
    assert Engine(tiny, graphs="off").fixed is None
    assert Engine(tiny, graphs="eager").fixed.capture is False
    with pytest.raises(ValueError, match="graphs must be one of auto, eager, off"):
        Engine(tiny, graphs="always")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_on_a_gpu_captured_steps_replay_what_the_eager_fixed_steps_compute(embedded, dtype):
    model = build_tiny_gpt2(embedded.tokenizer, n_embd=128, n_layer=3, n_head=4).to("cuda", dtype)
    loaded = wrap_model(model, embedded.tokenizer, "tiny-gpt2-cuda", max_context=256)
    written = {}
    for graphs in ("eager", "auto"):
        engine = Engine(loaded, graphs=graphs)
        generations = [engine.start(text, dataclasses.replace(SAMPLED, seed=i, length=6 + 3 * i))[0]
                       for i, text in enumerate(["The weather today is", "Dear diary,", "Once upon a time"])]
        step_until_finished(engine, generations)
        written[graphs] = (tokens(generations), engine.fixed)
    assert written["auto"][0] == written["eager"][0]
    graphs = written["auto"][1]
    # one graph per shape (four rows while all three write, then two, then one), replayed at every later step; the
    # only eager steps are those that checked each graph's first replay
    assert graphs.captures == len(graphs.shapes()) >= 2 and graphs.replays > graphs.captures
    assert graphs.failure is None and graphs.runs == graphs.checks >= 1


def test_a_class_on_the_real_app_with_fixed_shape_steps_gets_what_it_gets_without(embedded):
    """The CUDA_GRAPHS setting reaches the engine; seeded Tabs of five students read the same either way."""
    written = {}
    for graphs in ("off", "eager"):
        app = make_app(embedded, CUDA_GRAPHS=graphs)
        try:
            texts = [f"{index}. Dear diary, today the river" for index in range(5)]
            written[graphs] = [done["options"] for done in class_presses_tab(app, texts, 10)]
            fixed = app.extensions["tabwrite"].scheduler.engine.fixed
            assert (fixed is None) == (graphs == "off")
        finally:
            app.extensions["tabwrite"].scheduler.stop()
    assert fixed.runs > 0
    assert written["eager"] == written["off"]


def test_steps_that_cannot_be_captured_go_on_eagerly_and_say_why_once(plain, embedded, caplog):
    """Here capturing fails for a real reason (no CUDA in this PyTorch): the class is still served, the same."""
    engine = Engine(embedded, graphs="eager")
    engine.fixed.capture = True  # as on a CUDA device
    with caplog.at_level("WARNING", logger="webapp.fixed_steps"):
        written, steps = three_sampled(engine, lengths=(6, 6, 6))
    assert written == three_sampled(plain, lengths=(6, 6, 6))[0]
    assert engine.fixed.capture is False and engine.fixed.captures == 0 and engine.fixed.runs == steps > 3
    assert "CUDA" in engine.fixed.failure
    assert [record.message for record in caplog.records].count(
        f"decoding steps cannot be captured as CUDA graphs ({engine.fixed.failure}); they run without") == 1


class GraphOnTheCpu:
    """Stands in for a captured torch.cuda.CUDAGraph where there is no CUDA: replay runs the step into its output.

    `stale`: replay leaves the output as it was recorded, as a graph would that baked
    its inputs in (computing the step it was captured in again and again).
    """

    def __init__(self, shape, model, stale):
        self.shape, self.model, self.stale = shape, model, stale
        self.output = shape.run(model).clone()

    def replay(self):
        if not self.stale:
            self.output.copy_(self.shape.run(self.model))


def graphs_on_the_cpu(engine, stale=False):
    """Make `engine`'s fixed steps capture and replay with GraphOnTheCpu: what FixedSteps does around the CUDA calls."""
    fixed = engine.fixed
    fixed.capture = True

    def warm_up(shape):
        return [shape.run(fixed.model) for _ in range(fixed_steps.WARM_UPS)][-1]

    def record(shape):
        graph = GraphOnTheCpu(shape, fixed.model, stale)
        return graph, graph.output

    fixed._warm_up, fixed._record = warm_up, record
    return fixed


def three_sampled(engine, lengths=(6, 9, 12)):
    """Three seeded requests (3 options each) of different lengths, stepped together to the end: tokens, steps."""
    texts = ["The weather today is", "Dear diary,", "Once upon a time"]
    generations = [engine.start(text, dataclasses.replace(SAMPLED, seed=seed, length=length))[0]
                   for seed, (text, length) in enumerate(zip(texts, lengths))]
    steps = step_until_finished(engine, generations)
    return tokens(generations), steps


def test_each_shape_is_captured_once_replayed_after_and_its_first_replay_checked_against_an_eager_step(plain,
                                                                                                     embedded):
    plain._spare = None
    expected, steps = three_sampled(plain)
    engine = Engine(embedded, graphs="eager")
    graphs = graphs_on_the_cpu(engine)
    assert three_sampled(engine) == (expected, steps)
    # four rows while all three write, then two, then one: a graph each, every later step of a shape replayed
    assert graphs.shapes() == [(1, 3), (2, 3), (4, 3)] and graphs.captures == 3 and graphs.failure is None
    assert graphs.replays == steps - 3, "the three steps that captured used their warm-up's logits"
    assert graphs.checks == graphs.runs == 3, "each graph's first replay checked by one eager run, the rest trusted"
    assert all(shape.checked for shape in graphs._shapes.values())
    assert three_sampled(engine) == (expected, steps), "the next class replays the same graphs in the same stack"
    assert graphs.captures == 3 and graphs.checks == 3 and graphs.replays == 2 * steps - 3


def test_a_graph_whose_replay_computes_something_else_is_caught_at_its_first_replay_and_steps_go_on_eagerly(
        plain, embedded, caplog):
    plain._spare = None
    expected, steps = three_sampled(plain)
    engine = Engine(embedded, graphs="eager")
    graphs = graphs_on_the_cpu(engine, stale=True)
    with caplog.at_level("WARNING", logger="webapp.fixed_steps"):
        assert three_sampled(engine) == (expected, steps), "the check's eager step is used: nothing stale is sampled"
    assert graphs.capture is False and graphs.captures == 1 and graphs.checks == 1 and graphs.replays == 1
    assert graphs.failure.startswith("GraphMismatch: a replayed step's logits differ from the eager step's by up to")
    assert [record.message for record in caplog.records].count(
        f"decoding steps cannot be captured as CUDA graphs ({graphs.failure}); they run without") == 1
