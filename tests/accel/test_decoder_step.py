"""A decoding step in one call to our C kernels (webapp/accel/decoder_step.py, csrc/decoder_step.c).

Each test runs the same requests through transformers' LlamaModel or GPT2Model and
through ours, from the same prompt caches, and compares what the model computed.
"""
import copy

import pytest
import torch
from conftest import build_tiny_gpt2, class_presses_tab, make_app, run
from transformers import GPT2Model, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaModel

from webapp.accel import decoder_step, native
from webapp.accel.lowbit import pack_model
from webapp.generation import kvcache
from webapp.generation.engine import Engine
from webapp.models.formats import apply_format
from webapp.models.loading import wrap_model
from webapp.web.protocol import SamplingSettings

needs_kernel = pytest.mark.skipif(native.library() is None, reason=f"our kernels cannot run here: {native.why_not()}")
needs_tiles = pytest.mark.skipif(not native.tiles(), reason="this CPU has no AMX tiles (or Linux lends none)")
TILES = [pytest.param(True, marks=needs_tiles, id="tiles"), pytest.param(False, id="avx512")]

TEXT = ("The river ran quietly past the old mill, where the children of the village gathered every summer "
        "to watch the boats and tell each other stories about the people who lived upstream.")


@pytest.fixture(scope="module")
def embedded_int4(embedded):
    """The embedded model in int4, as `--dtype int4` loads it (4-bit layers on our kernel where it runs)."""
    model = copy.deepcopy(embedded.model)
    pack_model(model)
    return wrap_model(model, embedded.tokenizer, "embedded-int4")


def tiny_llama(tokenizer, heads, kv_heads, head_dim, layers=2, seed=0, packed=True):
    """A small Llama with random weights, packed in int4 as the embedded model is (unless not `packed`: float32)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=320, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                         max_position_embeddings=512, tie_word_embeddings=True, initializer_range=0.1)
    model = LlamaForCausalLM(config).eval()
    if packed:
        pack_model(model)
    return wrap_model(model, tokenizer, "tiny-llama", max_context=512)


class Recorder:
    """Steps an engine's requests, keeping every step's logits (what its sampler was given) per request."""

    def __init__(self, engine):
        self.engine, self.logits = engine, {}
        chooser = engine.chooser
        sample, sample_many = chooser.sample, chooser.sample_many
        chooser.sample = lambda generation, logits, rows=None: (
            self.keep(generation, logits), sample(generation, logits, rows))[1]
        chooser.sample_many = lambda generations, logits: (
            [self.keep(generation, part) for generation, part in
             zip(generations, logits.split([len(generation.options) for generation in generations]))],
            sample_many(generations, logits))[1]

    def keep(self, generation, logits):
        self.logits.setdefault(id(generation), []).append(logits.float().clone())

    def steps(self, requests, count, base_class):
        """Start `requests` [(text, settings)], step them `count` times with `base_class` as the base model.

        Returns the generations, each with `.seen`: its logits at the start and at every step.
        """
        self.engine.model.base_model.__class__ = base_class
        self.logits.clear()
        generations = [self.engine.start(text, settings)[0] for text, settings in requests]
        for _ in range(count):
            self.engine.step_many(generations)
        self.engine._stack = None
        for generation in generations:
            generation.seen = self.logits[id(generation)]
        return generations


def divergences(expected, actual):
    """KL(expected || actual) of each row's next-token distribution, in nats (a shift of all logits costs nothing)."""
    expected, actual = (torch.log_softmax(values.float(), dim=-1) for values in (expected, actual))
    return (expected.exp() * (expected - actual)).sum(-1)


def from_float32(embedded, generation):
    """How far each prediction of a greedy generation's first option is from the float32 model's, in nats."""
    option = generation.options[0]
    ids = torch.tensor([generation.prompt_ids + option.tokens])
    with torch.inference_mode():
        exact = embedded.model(input_ids=ids).logits[0, len(generation.prompt_ids) - 1:-1]
    predicted = torch.stack([logits[0] for logits in generation.seen])[:exact.shape[0]]
    return divergences(exact, predicted)


def greedy(n):
    # no time limit that a busy machine could reach: the tests compare tokens
    return SamplingSettings(n=n, mode="greedy", length=50, stop_at="length", max_time=600)


@needs_kernel
@pytest.mark.parametrize("shape", [(3,), (3, 2, 1)], ids=["one request", "three requests of 3, 2 and 1 options"])
def test_the_embedded_model_steps_in_c_as_close_to_float32_as_transformers_steps(embedded, embedded_int4, shape):
    """Greedy steps of one request, then of three stacked with unlike option counts, against float32's predictions."""
    engine = Engine(embedded_int4)
    plan = decoder_step.step_plan(engine.model.base_model)
    recorder = Recorder(engine)
    requests = [(f"{index} {TEXT}", greedy(n)) for index, n in enumerate(shape)]
    theirs = recorder.steps(requests, 12, LlamaModel)
    before = plan.steps
    ours = recorder.steps(requests, 12, decoder_step.NativeLlamaModel)
    assert plan.steps - before == 12
    for mine, yours in zip(theirs, ours):
        # the first step's keys and values of layer 0: the same products, rotation and roundings, to the bit
        assert torch.equal(mine.cache.layers[0].keys[..., :len(mine.prompt_ids) + 1, :],
                           yours.cache.layers[0].keys[..., :len(yours.prompt_ids) + 1, :])
        assert torch.equal(mine.cache.layers[0].values[..., :len(mine.prompt_ids) + 1, :],
                           yours.cache.layers[0].values[..., :len(yours.prompt_ids) + 1, :])
        # measured on three texts: mean 0.0034-0.0040 nats from float32 in C, 0.0032-0.0039 in transformers;
        # the largest 0.010-0.017 against 0.007-0.010 (attention's float32 sums round differently)
        expected, actual = from_float32(embedded, mine), from_float32(embedded, yours)
        assert actual.mean() < 0.01 and actual.max() < 0.05, (expected, actual)
        assert actual.mean() < 2 * expected.mean() + 0.002, (expected, actual)


@needs_kernel
@pytest.mark.parametrize("tiles", TILES)
@pytest.mark.parametrize("heads, kv_heads, head_dim", [(4, 2, 32), (2, 2, 64), (4, 1, 128)])
def test_grouped_query_and_head_sizes_attend_as_transformers_does(embedded, heads, kv_heads, head_dim, tiles):
    """A small random Llama of each kind: the first step's logits and every layer's new keys agree.

    With 3 options a key head has 6, 3 and 12 query heads: the tiles take the first and last.
    """
    engine = Engine(tiny_llama(embedded.tokenizer, heads, kv_heads, head_dim))
    decoder_step.step_plan(engine.model.base_model).tiles = tiles
    recorder = Recorder(engine)
    requests = [(TEXT, greedy(3)), (TEXT[:60], greedy(2))]
    theirs = recorder.steps(requests, 1, LlamaModel)
    before = native.tile_parts()
    ours = recorder.steps(requests, 1, decoder_step.NativeLlamaModel)
    assert (native.tile_parts() > before) == (tiles and heads // kv_heads * 3 >= 4)
    for mine, yours in zip(theirs, ours):
        step = mine.seen[1]  # after the prompt's own logits
        assert (step - yours.seen[1]).abs().max() < 0.05 * step.abs().max()
        assert torch.equal(mine.cache.layers[0].keys, yours.cache.layers[0].keys)
        for layer, other in zip(mine.cache.layers, yours.cache.layers):
            assert layer.keys.shape == other.keys.shape
            assert torch.allclose(layer.keys.float(), other.keys.float(), atol=0.05, rtol=0.05)


@needs_kernel
@pytest.mark.parametrize("new_words", [" And", " And the boats, the stories and the mill were all they had."])
def test_new_tokens_of_a_text_are_read_in_c_as_transformers_reads_them(embedded_int4, new_words):
    """A growing document's new words (and a primed Tab's last tokens) read on its cache: the same keys and logits."""
    engine = Engine(embedded_int4)
    base, plan = engine.model.base_model, decoder_step.step_plan(engine.model.base_model)
    read = {}
    for kind in (LlamaModel, decoder_step.NativeLlamaModel):
        base.__class__ = kind
        _, prefix = engine.next_token_logits(TEXT)
        before = plan.steps
        logits, grown = engine.next_token_logits(TEXT + new_words, prefix)
        read[kind] = logits, grown.cache, plan.steps - before
    (expected, theirs, none), (actual, ours, one) = read.values()
    assert (none, one) == (0, 1)  # transformers' read, then ours in one call
    assert 1 < ours.get_seq_length() - len(engine.vocab.ids(TEXT)) + 1 <= plan.most_rows
    assert torch.equal(theirs.layers[0].keys, ours.layers[0].keys)
    assert torch.equal(theirs.layers[0].values, ours.layers[0].values)
    # measured: 0.0054 and 0.0042 nats between the two; from float32's, over 80 reads of 1, 2 and 8 tokens of a
    # text, ours 0.0025-0.0028 nats on average and transformers' 0.0028-0.0032
    assert divergences(expected[None], actual[None]).item() < 0.01 and expected.argmax() == actual.argmax()
    # a primed Tab reads its last tokens the same way, then steps
    prefix, _ = engine.prime(TEXT, greedy(3))
    before = plan.steps
    generation, _ = engine.start(TEXT, greedy(3), prefix=prefix)
    assert generation.reused > 0 and plan.steps == before + 1


def tiny_gpt2(tokenizer, heads, width, layers=3):
    """A small GPT-2 with random weights, in the int4 format (Conv1D as Linear, then packed)."""
    model = build_tiny_gpt2(tokenizer, n_positions=512, n_embd=width, n_layer=layers, n_head=heads)
    with torch.no_grad():  # wider weights than GPT-2's initialisation, so that attention has something to do
        for parameter in model.parameters():
            parameter.mul_(4)
    apply_format(model, "int4", "cpu")
    return wrap_model(model, tokenizer, "tiny-gpt2-int4", max_context=512)


@needs_kernel
@pytest.mark.parametrize("options, tiles", [(3, False), (5, False), pytest.param(5, True, marks=needs_tiles)],
                         ids=["3 options", "5 options on avx512", "5 options on tiles"])
@pytest.mark.parametrize("heads, width", [(2, 128), (4, 128), (3, 192)])
def test_gpt2_blocks_step_in_c_as_transformers_does(embedded, heads, width, options, tiles):
    """GPT-2's blocks (GPT-2 large's architecture, smaller): the steps' logits and every layer's keys agree."""
    engine = Engine(tiny_gpt2(embedded.tokenizer, heads, width))
    plan = decoder_step.step_plan(engine.model.base_model)
    assert isinstance(plan, decoder_step.GPT2Plan)
    plan.tiles = tiles  # a key head has a query head per option: the tiles take 4 or more
    recorder = Recorder(engine)
    requests = [(TEXT, greedy(options)), (TEXT[:60], greedy(options - 1))]
    theirs = recorder.steps(requests, 3, GPT2Model)
    before, parts = plan.steps, native.tile_parts()
    ours = recorder.steps(requests, 3, decoder_step.NativeGPT2Model)
    assert plan.steps - before == 3 and (native.tile_parts() > parts) == tiles
    for mine, yours in zip(theirs, ours):
        first = len(mine.prompt_ids) + 1  # the prompt and the first step's column: same inputs on both sides
        assert torch.equal(mine.cache.layers[0].keys[..., :first, :], yours.cache.layers[0].keys[..., :first, :])
        for layer, other in zip(mine.cache.layers, yours.cache.layers):
            expected, actual = layer.values[..., :first, :].float(), other.values[..., :first, :].float()
            # measured: up to 0.19 where values reach 13 to 17, one or two bfloat16 steps
            assert (expected - actual).abs().max() <= 0.02 * expected.abs().max()
        step = mine.seen[1]
        assert (step - yours.seen[1]).abs().max() < 0.05 * step.abs().max()
        assert divergences(step, yours.seen[1]).max() < 0.01


@needs_tiles
@pytest.mark.parametrize("shape", [(3,), (3, 2, 1)], ids=["one request", "three requests of 3, 2 and 1 options"])
def test_attention_on_the_tiles_and_on_avx512_agree_over_a_long_document(embedded, embedded_int4, shape):
    """A 340-token document (its attention cut in parts for the two threads): both ways close to float32 and to
    each other. (Their logits are most often equal to the bit: sums of bfloat16 products are mostly exact in
    float32, in any order.)"""
    engine = Engine(embedded_int4)
    plan = decoder_step.step_plan(engine.model.base_model)
    recorder = Recorder(engine)
    document = " ".join([TEXT] * 10)
    requests = [(f"{index} {document}", greedy(n)) for index, n in enumerate(shape)]
    runs, on_the_tiles = {}, {}
    for tiles in (True, False):
        plan.tiles = tiles
        before = native.tile_parts()
        runs[tiles] = recorder.steps(requests, 6, decoder_step.NativeLlamaModel)
        on_the_tiles[tiles] = native.tile_parts() - before
    # 6 steps x 30 layers x 3 key heads a request, or more where a key head's attention is cut in parts
    assert on_the_tiles[True] >= 6 * 30 * 3 * len(shape) and on_the_tiles[False] == 0
    assert len(runs[True][0].prompt_ids) > 300
    for on_tiles, on_avx in zip(runs[True], runs[False]):
        assert [option.tokens for option in on_tiles.options] == [option.tokens for option in on_avx.options]
        steps = list(zip(on_tiles.seen[1:], on_avx.seen[1:]))
        assert max(divergences(a, b).max().item() for a, b in steps) < 0.01
        for generation in (on_tiles, on_avx):
            drift = from_float32(embedded, generation)
            assert drift.mean() < 0.01 and drift.max() < 0.05, drift


def test_tabwrite_tiles_0_keeps_attention_on_avx512(monkeypatch):
    monkeypatch.setenv("TABWRITE_TILES", "0")
    assert native.tiles.__wrapped__() is False


@needs_kernel
def test_a_sampled_request_on_the_c_step_is_repeatable(embedded_int4):
    engine = Engine(embedded_int4)
    settings = SamplingSettings(n=3, seed=7, length=12, stop_at="length")
    first, _ = run(engine, TEXT, settings)
    second, _ = run(engine, TEXT, settings)
    assert first.texts() == second.texts() and len(set(first.texts())) > 1


def a_class(plan, options):
    """Requests of `options` options each, in turn, enough for more rows than the packed products take."""
    counts = []
    while sum(counts) <= plan.most_rows:
        counts += options
    return counts


@needs_kernel
@pytest.mark.parametrize("options", [(3,), (3, 2, 1)], ids=["3 options each", "3, 2 and 1 options"])
def test_a_class_steps_layer_by_layer_as_close_to_float32_as_transformers_steps(embedded, embedded_int4, options):
    """A class's step (more rows than the packed products take): the dense copies' products between our C pieces,
    against transformers' layers on the same products."""
    engine = Engine(embedded_int4)
    plan = decoder_step.step_plan(engine.model.base_model)
    recorder = Recorder(engine)
    counts = a_class(plan, options)
    requests = [(f"{index} {TEXT}", greedy(n)) for index, n in enumerate(counts)]
    theirs = recorder.steps(requests, 6, LlamaModel)
    before, by_layers = plan.steps, plan.steps_by_layers
    ours = recorder.steps(requests, 6, decoder_step.NativeLlamaModel)
    assert (plan.steps, plan.steps_by_layers - by_layers) == (before, 6) and sum(counts) > plan.most_rows
    for mine, yours in zip(theirs, ours):
        first = len(mine.prompt_ids) + 1  # the same products, norms, rotation and roundings: layer 0's keys to the bit
        assert torch.equal(mine.cache.layers[0].keys[..., :first, :], yours.cache.layers[0].keys[..., :first, :])
        assert [option.tokens for option in mine.options] == [option.tokens for option in yours.options]
        # measured over 14 requests, 6 steps: at most 0.0115 nats apart (a greedy request's options are alike)
        apart = [divergences(a, b) for a, b in zip(mine.seen[1:], yours.seen[1:])]
        assert max(step.max().item() for step in apart) < 0.03
    for mine, yours in list(zip(theirs, ours))[:4]:
        # measured: 0.0020-0.0044 nats from float32 on average (transformers' 0.0023-0.0037), at most 0.0128
        expected, actual = from_float32(embedded, mine), from_float32(embedded, yours)
        assert actual.mean() < 0.01 and actual.max() < 0.05, (expected, actual)
        assert actual.mean() < 2 * expected.mean() + 0.002, (expected, actual)


@needs_kernel
@pytest.mark.parametrize("tiles", TILES)
@pytest.mark.parametrize("model", ["llama 4 heads, 2 key heads of 32", "gpt2 3 heads of 64"])
def test_small_models_step_a_class_layer_by_layer_as_transformers_does(embedded, model, tiles):
    """A class's step of a small random Llama (grouped-query) and GPT-2 (joint q, k, v; GELU; LayerNorm)."""
    loaded = (tiny_llama(embedded.tokenizer, 4, 2, 32) if model.startswith("llama")
              else tiny_gpt2(embedded.tokenizer, 3, 192))
    engine = Engine(loaded)
    plan = decoder_step.step_plan(engine.model.base_model)
    plan.tiles = tiles
    recorder = Recorder(engine)
    requests = [(f"{index} {TEXT[:40 + 3 * index]}", greedy(n)) for index, n in enumerate(a_class(plan, (3, 2)))]
    ours_class = type(engine.model.base_model)
    # one step: a random model's near ties may send greedy tokens apart after it
    theirs = recorder.steps(requests, 1, ours_class.__mro__[1])  # transformers' own class
    before, parts = plan.steps_by_layers, native.tile_parts()
    ours = recorder.steps(requests, 1, ours_class)
    assert plan.steps_by_layers - before == 1 and len(requests) > 1
    # the Llama's key heads have 6 query heads with 3 options, GPT-2's 3 (AVX-512 takes fewer than 4)
    assert (native.tile_parts() > parts) == (tiles and model.startswith("llama"))
    for mine, yours in zip(theirs, ours):
        first = len(mine.prompt_ids) + 1
        assert torch.equal(mine.cache.layers[0].keys[..., :first, :], yours.cache.layers[0].keys[..., :first, :])
        step = mine.seen[1]
        assert (step - yours.seen[1]).abs().max() < 0.05 * step.abs().max()
        assert divergences(step, yours.seen[1]).max() < 0.01


@needs_kernel
def test_a_class_pressing_tab_at_once_on_the_real_server_steps_layer_by_layer(embedded_int4):
    """Thirteen students' seeded Tabs through the app: each gets its own three options, streamed, from steps of
    more rows than the packed path takes."""
    app = make_app(embedded_int4)
    try:
        plan = decoder_step.step_plan(app.extensions["tabwrite"].scheduler.engine.model.base_model)
        before = plan.steps_by_layers
        finished = class_presses_tab(app, [f"{index}. {TEXT}" for index in range(plan.most_rows // 3 + 1)], 16)
        for done in finished:  # 16 tokens each, unless the model ended the text (an option may even end at once)
            assert all(finish == "length" and option.strip() or finish == "eos"
                       for option, finish in zip(done["options"], done["finish"])), done
        assert plan.steps_by_layers > before
        assert sum(done["finish"].count("length") for done in finished) > 30
    finally:
        app.extensions["tabwrite"].scheduler.stop()


@needs_kernel
def test_steps_the_c_code_does_not_compute_go_through_transformers(embedded, embedded_int4):
    engine = Engine(embedded_int4)
    plan = decoder_step.step_plan(engine.model.base_model)
    before = plan.steps
    # reading a prompt, and beam search (no option rows), are transformers' too
    engine.start(TEXT, SamplingSettings(n=2, mode="beam", length=3, stop_at="length"))
    assert plan.steps == before
    # float32 and bfloat16 models have no 4-bit layers for it
    assert decoder_step.step_plan(Engine(embedded).model.base_model) is None
    bfloat16 = wrap_model(copy.deepcopy(embedded.model).bfloat16(), embedded.tokenizer, "embedded-bf16")
    assert decoder_step.step_plan(Engine(bfloat16).model.base_model) is None


@needs_kernel
def test_a_packed_copy_of_a_served_model_gets_a_plan_of_its_own(embedded):
    assert decoder_step.step_plan(Engine(embedded).model.base_model) is None  # float32: served as transformers has it
    model = copy.deepcopy(embedded.model)
    pack_model(model)
    plan = decoder_step.step_plan(Engine(wrap_model(model, embedded.tokenizer, "embedded-int4")).model.base_model)
    assert isinstance(plan, decoder_step.LlamaPlan) and plan.layers[0] is model.model.layers[0]
    assert copy.deepcopy(plan) is None  # a copy of the model holds no addresses of this one's weights
    # `.to()` and the like may give the weights new memory: the plan is made again
    model.to(torch.bfloat16)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert decoder_step.step_plan(model.model) is not plan
    assert q_proj.packed.data_ptr() in decoder_step.step_plan(model.model).weights[0].tolist()


def test_without_our_kernels_no_model_gets_the_c_step(monkeypatch, embedded):
    monkeypatch.setattr(native, "library", lambda: None)
    model = copy.deepcopy(embedded.model)
    pack_model(model)
    engine = Engine(wrap_model(model, embedded.tokenizer, "embedded-int4-aten"))
    assert decoder_step.step_plan(engine.model.base_model) is None
    generation, _ = run(engine, TEXT, greedy(2))
    assert all(option.tokens for option in generation.options)


@needs_kernel
def test_a_mask_that_does_not_cover_the_cache_is_refused(embedded_int4):
    engine = Engine(embedded_int4)
    generation, _ = engine.start(TEXT, greedy(1))
    plan = decoder_step.step_plan(engine.model.base_model)
    layers = generation.cache.layers
    assert all(isinstance(layer, kvcache.GrowingLayer) for layer in layers)
    with pytest.raises(ValueError, match="columns"):
        plan._cache_table(generation.cache, torch.empty(1, 3, 1, 64, dtype=torch.bfloat16), layers[0].keys.shape[2] + 2)
