"""Our C kernels (webapp/accel/native.py, csrc/): 4- and 8-bit layers for a few rows, and Llama's RMSNorm."""
import copy
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

from webapp.accel import lowbit, native
from webapp.accel.lowbit import GROUP, PackedLinear

needs_kernel = pytest.mark.skipif(native.library() is None, reason=f"our kernels cannot run here: {native.why_not()}")


def activations_as_the_kernel_rounds_them(rows):
    """Each group of 32 inputs of each row rounded to 8 bits on its own scale (largest magnitude / 127)."""
    groups = rows.float().reshape(rows.shape[0], -1, GROUP)
    largest = groups.abs().amax(-1, keepdim=True)
    # 127 / largest as one division (`127 / tensor` is a reciprocal times 127: a level can land one apart at .5)
    inverse = torch.where(largest > 0, torch.full_like(largest, 127.0) / largest, torch.zeros_like(largest))
    levels = torch.round(groups * inverse)
    return (levels * largest / 127).reshape(rows.shape)


def layer_weights(outputs, inputs, seed):
    """A random weight as lowbit keeps it in 4 bits (levels, scales and zeros) and in 8 bits (levels, scales)."""
    weight = torch.randn(outputs, inputs, generator=torch.Generator().manual_seed(seed)) * 0.05
    return lowbit.quantize_int4(weight), lowbit.quantize_rows_int8(weight)


def exact_int4(levels, scales_and_zeros):
    """The 4-bit weight in float32, (level - 8) × scale + zero, before any bfloat16 rounding."""
    outputs, inputs = levels.shape
    scale, zero = scales_and_zeros.float().transpose(0, 1).unbind(-1)
    return ((levels.reshape(outputs, -1, GROUP).float() - 8) * scale[..., None] + zero[..., None]).reshape(
        outputs, inputs)


def product(bits, rows, weights, bias, outputs):
    """Our kernel's product of bfloat16 `rows` and `weights` (as pack_int4 or pack_int8 give them)."""
    return native.Layer(bits, weights, bias, rows.shape[1], outputs)(rows)


def assert_within_bfloat16_of(outputs, expected):
    """Each output within the rounding of a bfloat16 result (plus float32 summation order) of `expected`."""
    assert outputs.dtype == torch.bfloat16 and outputs.shape == expected.shape
    tolerance = 2 ** -8 * expected.abs() + 1e-5 * expected.abs().max()
    assert ((outputs.float() - expected).abs() <= tolerance).all()


@needs_kernel
@pytest.mark.parametrize("outputs, inputs", [(48, 64), (40, 96), (50, 128), (1536, 576)])
@pytest.mark.parametrize("rows", [1, 3, 4, 5, 8, 9, 13, 21])
@pytest.mark.parametrize("with_bias", [False, True])
def test_each_kernel_computes_its_weights_times_the_rounded_activations(outputs, inputs, rows, with_bias):
    # outputs not in whole blocks of 16 (40, 50) are padded; rows go 4 at a time (4 bits: 8 from 8 rows on), with
    # any remainder
    (levels, scales_and_zeros), (levels8, scales8) = layer_weights(outputs, inputs, seed=rows)
    rows_in = torch.randn(rows, inputs, generator=torch.Generator().manual_seed(7)).bfloat16()
    bias = torch.randn(outputs).bfloat16() if with_bias else None
    rounded = activations_as_the_kernel_rounds_them(rows_in)
    added = 0 if bias is None else bias.float()
    four = product(4, rows_in, native.pack_int4(levels, scales_and_zeros), bias, outputs)
    assert_within_bfloat16_of(four, rounded @ exact_int4(levels, scales_and_zeros).T + added)
    eight = product(8, rows_in, native.pack_int8(levels8, scales8), bias, outputs)
    assert_within_bfloat16_of(eight, rounded @ (levels8.float() * scales8.float()[:, None]).T + added)


@needs_kernel
@pytest.mark.parametrize("bits", [4, 8])
def test_a_rows_product_is_the_same_to_the_bit_in_any_batch(bits):
    """A step's 3 rows (blocks of 4) and the same rows among a prompt's 300 (4 bits: blocks of 8) give equal outputs."""
    (levels, scales_and_zeros), (levels8, scales8) = layer_weights(1536, 576, seed=3)
    weights = native.pack_int4(levels, scales_and_zeros) if bits == 4 else native.pack_int8(levels8, scales8)
    many = torch.randn(300, 576, generator=torch.Generator().manual_seed(5)).bfloat16()
    bias = torch.randn(1536).bfloat16()
    alone = product(bits, many[101:104].contiguous(), weights, bias, 1536)
    assert torch.equal(product(bits, many, weights, bias, 1536)[101:104], alone)


@needs_kernel
def test_rounding_the_activations_costs_under_one_percent_of_the_product():
    (levels, scales_and_zeros), _ = layer_weights(1280, 1280, seed=3)
    rows = torch.randn(3, 1280, generator=torch.Generator().manual_seed(4)).bfloat16()
    outputs = product(4, rows, native.pack_int4(levels, scales_and_zeros), None, 1280).float()
    expected = rows.float() @ exact_int4(levels, scales_and_zeros).T
    assert 0 < ((outputs - expected).norm() / expected.norm()).item() < 0.01  # measured: 0.55 %


def test_the_4_bit_layout_holds_each_level_where_the_kernel_reads_it():
    (levels, scales_and_zeros), _ = layer_weights(40, 64, seed=5)
    packed, scales, zeros = native.pack_int4(levels, scales_and_zeros)
    assert packed.shape == (3, 2, 4, 16, 4) and packed.dtype == torch.uint8  # 40 outputs: 3 blocks, the last padded
    for output, block_output, block in [(0, 0, 0), (17, 1, 1), (39, 7, 2)]:
        for input_ in (0, 5, 19, 31, 32, 63):
            group, within = divmod(input_, GROUP)
            vector, byte = divmod(within % 16, 4)
            stored = packed[block, group, vector, block_output, byte]
            level = stored & 0x0F if within < 16 else stored >> 4  # inputs 16..31 of a group: the high nibbles
            assert level == levels[output, input_]
        assert scales[block, 1, block_output] == scales_and_zeros[1, output, 0]
        assert zeros[block, 1, block_output] == scales_and_zeros[1, output, 1]
    assert (packed[2, :, :, 8:] == 0).all() and (scales[2, :, 8:] == 0).all()  # the padding: zero weights


def test_the_8_bit_layout_holds_each_weight_plus_128_where_the_kernel_reads_it():
    _, (levels, scales) = layer_weights(20, 64, seed=6)
    packed, padded_scales = native.pack_int8(levels, scales)
    assert packed.shape == (2, 2, 8, 16, 4) and padded_scales.shape == (32,)
    for output, input_ in [(0, 0), (3, 37), (19, 63)]:
        block, block_output = divmod(output, 16)
        group, within = divmod(input_, GROUP)
        assert packed[block, group, within // 4, block_output, within % 4] == int(levels[output, input_]) + 128
    assert torch.equal(padded_scales[:20], scales.float()) and (padded_scales[20:] == 0).all()


@needs_kernel
def test_one_thread_or_two_give_the_same_outputs():
    (levels, scales_and_zeros), _ = layer_weights(512, 256, seed=8)
    weights = native.pack_int4(levels, scales_and_zeros)
    rows = torch.randn(6, 256).bfloat16()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = product(4, rows, weights, None, 512)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, product(4, rows, weights, None, 512))  # each block of outputs is one thread's


@needs_kernel
def test_packed_layers_take_the_kernel_only_for_whole_groups_of_inputs():
    assert PackedLinear.from_linear(torch.nn.Linear(64, 32), 4).kernel == "vnni"
    assert PackedLinear.from_linear(torch.nn.Linear(64, 50), 8).kernel == "vnni"
    assert not native.takes(48)
    layer = PackedLinear.from_linear(torch.nn.Linear(48, 32), 8)  # 8 bits takes multiples of 16: PyTorch's kernel
    assert layer.kernel == "aten"
    rows = torch.randn(3, 48).bfloat16()
    assert (layer(rows).float() - F.linear(rows.float(), layer.weight.float(), layer.bias.float())).abs().max() < 0.05


def test_why_not_names_what_keeps_the_kernel_off(monkeypatch):
    monkeypatch.setenv(native.ENABLED_VARIABLE, "0")
    assert native.ENABLED_VARIABLE in native.why_not()
    monkeypatch.delenv(native.ENABLED_VARIABLE)
    assert "avx512_vnni" in native.why_not(flags=frozenset({"avx512f", "avx512bw"}))
    monkeypatch.setenv("CC", "no-such-compiler")
    assert "compiler" in native.why_not(flags=native.CPU_FLAGS)
    monkeypatch.delenv("CC")
    assert native.why_not(flags=native.CPU_FLAGS | {"sse2"}) == ("" if native._compiler() else native.why_not())


@needs_kernel
def test_the_library_is_compiled_once_into_the_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    built = native._built()
    assert built.parent == tmp_path / "tabwrite" / "native" and built.suffix == ".so"
    first = built.stat().st_mtime_ns
    assert native._built() == built and built.stat().st_mtime_ns == first  # found, not compiled again
    assert os.listdir(built.parent) == [built.name]  # no half-written file left beside it


def test_the_formats_doc_says_how_to_switch_the_kernel_off():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "formats.md").read_text()
    assert f"`{native.ENABLED_VARIABLE}=0`" in doc and "vnni_linear.c" in doc


@needs_kernel
def test_a_layer_whose_tensors_are_replaced_hands_the_kernel_the_new_ones():
    layer = PackedLinear.from_linear(torch.nn.Linear(64, 48), 4)
    rows = torch.randn(3, 64).bfloat16()
    before = layer(rows)
    layer._apply(lambda tensor: tensor.clone())  # what .to(), .share_memory() and the like go through
    assert layer._kernel.weights[0] is layer.packed and layer._kernel.bias is layer.bias
    assert torch.equal(layer(rows), before)


@needs_kernel
@pytest.mark.parametrize("rows, width", [(1, 64), (3, 576), (40, 576), (300, 1280)])
def test_the_rms_norm_computes_transformers_values_on_bfloat16(rows, width):
    # 40 and 300 rows: shared by the threads; a decoding step's 3 stay on one
    norm = LlamaRMSNorm(width, eps=1e-5)
    norm.weight.data = (torch.randn(width, generator=torch.Generator().manual_seed(width)) * 0.3 + 1).bfloat16()
    hidden = (torch.randn(rows, 2, width, generator=torch.Generator().manual_seed(rows)) * 3).bfloat16()
    expected, ours = norm(hidden), native.rms_norm(hidden, norm.weight, norm.variance_epsilon)
    assert ours.dtype == torch.bfloat16 and ours.shape == expected.shape
    differ = ours != expected
    # only the sum of squares is added in another order: now and then the last bit of an output moves
    assert differ.float().mean() < 1e-4
    assert ((ours.float() - expected.float()).abs() <= 2 ** -7 * expected.float().abs()).all()


def test_the_engine_swaps_llamas_norms_and_mlps_for_ours_and_bfloat16_logits_stay_the_same(embedded):
    from webapp.accel import fused
    from webapp.generation.engine import Engine
    from webapp.models.loading import wrap_model

    model = copy.deepcopy(embedded.model).to(torch.bfloat16)
    ids = embedded.tokenizer("The river ran quietly past the old mill, where the", return_tensors="pt").input_ids
    with torch.inference_mode():
        before = model(input_ids=ids).logits
        Engine(wrap_model(model, embedded.tokenizer, "bf16"))
        after = model(input_ids=ids).logits
    norms = [type(module) for module in model.modules() if isinstance(module, LlamaRMSNorm)]
    mlps = {type(layer.mlp) for layer in model.model.layers}
    if native.library() is None:
        assert set(norms) == {LlamaRMSNorm} and mlps == {LlamaMLP}
        return
    assert set(norms) == {fused.NativeRMSNorm} and len(norms) == 2 * model.config.num_hidden_layers + 1
    assert mlps == {fused.NativeLlamaMLP}
    # bfloat16 logits tie now and then (this text has an exact tie at position 6): where the likeliest token is
    # clear (ahead by over 0.5) it stays the likeliest
    top_two = before.float().topk(2, dim=-1).values
    clear = top_two[..., 0] - top_two[..., 1] > 0.5
    assert clear.sum() >= 6 and torch.equal(after.argmax(-1)[clear], before.argmax(-1)[clear])
    assert (after.float() - before.float()).abs().max() < 0.1 * before.float().abs().max()
    float_norm, hidden = fused.NativeRMSNorm(model.config.hidden_size, 1e-5), torch.randn(2, model.config.hidden_size)
    calls = []
    original = native.rms_norm
    native.rms_norm = lambda *args: calls.append(args) or original(*args)
    try:  # float32 activations go through transformers' own code
        assert torch.equal(float_norm(hidden), LlamaRMSNorm.forward(float_norm, hidden)) and not calls
    finally:
        native.rms_norm = original


def test_a_failed_build_leaves_pytorchs_kernels_in_place_and_says_why(monkeypatch, caplog):
    import subprocess

    def failing_build():
        raise subprocess.CalledProcessError(1, ["cc"], stderr="error: unknown flag")

    monkeypatch.setattr(native, "why_not", lambda flags=None: "")
    monkeypatch.setattr(native, "_built", failing_build)
    with caplog.at_level("WARNING", logger="webapp.accel.native"):
        assert native.library.__wrapped__() is None  # the uncached body: what a first call would do
    assert "building them failed: error: unknown flag" in caplog.text


@needs_kernel
@pytest.mark.parametrize("shape", [(3, 1, 1536), (600, 1536)])
def test_silu_times_up_computes_transformers_values_on_bfloat16(shape):
    generator = torch.Generator().manual_seed(shape[0])
    gate, up = ((torch.randn(shape, generator=generator) * 3).bfloat16() for _ in range(2))
    gate.view(-1)[:4] = torch.tensor([100.0, -100.0, 0.0, -0.0])  # e^-x far out of range both ways, and zeros
    expected, ours = F.silu(gate) * up, native.silu_mul(gate, up)
    assert ours.shape == expected.shape and ours.dtype == torch.bfloat16
    # the same arithmetic with another e^x: now and then a last bit (none in 2.8 M values measured)
    assert (ours != expected).float().mean() < 1e-4
    assert ((ours.float() - expected.float()).abs() <= 2 ** -7 * expected.float().abs()).all()



@needs_kernel
@pytest.mark.parametrize("batch, heads, positions, dim, shared", [(6, 9, 300, 64, False), (4, 3, 37, 64, True),
                                                                  (30, 9, 1, 64, False), (2, 4, 5, 128, True)])
def test_the_rotary_embedding_computes_transformers_values_to_the_bit(batch, heads, positions, dim, shared):
    from webapp.accel import fused

    generator = torch.Generator().manual_seed(positions)
    # as the attention has them: a view of the projection's [batch, positions, heads x dim], heads moved forward
    x = (torch.randn(batch, positions, heads * dim, generator=generator) * 4).bfloat16()
    x = x.view(batch, positions, heads, dim).transpose(1, 2)
    angles = torch.arange(positions)[:, None] * torch.rand(dim // 2, generator=generator) * 3
    cos, sin = (f(torch.cat([angles, angles], dim=-1)).bfloat16()[None] for f in (torch.cos, torch.sin))
    if not shared:  # positions of their own per batch row
        cos, sin = cos.expand(batch, -1, -1).contiguous(), sin.expand(batch, -1, -1).contiguous()
    keys = x[:, :1]
    expected = fused.TRANSFORMERS_ROTARY(x, keys, cos, sin)
    ours = fused.apply_rotary_pos_emb(x, keys, cos, sin)
    assert all(torch.equal(a, b) for a, b in zip(ours, expected))


@needs_kernel
def test_prompts_read_with_our_rotary_embedding_give_transformers_logits_to_the_bit(embedded, monkeypatch):
    from transformers.models.llama import modeling_llama

    from webapp.accel import fused

    model = copy.deepcopy(embedded.model).to(torch.bfloat16)
    ids = embedded.tokenizer(["The river ran quietly past the old mill, where the", "Dear diary, today I saw a"],
                             return_tensors="pt", padding=True).input_ids
    calls = []
    rotary = native.rotary
    monkeypatch.setattr(native, "rotary", lambda *args: calls.append(args) or rotary(*args))
    logits = {}
    with torch.inference_mode():
        for name, function in (("transformers", fused.TRANSFORMERS_ROTARY), ("ours", fused.apply_rotary_pos_emb)):
            monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", function)
            logits[name] = model(input_ids=ids).logits
        assert torch.equal(logits["ours"], logits["transformers"])
        assert len(calls) == 2 * model.config.num_hidden_layers, "queries and keys of every layer"
        embedded.model(input_ids=ids[:1])  # float32: transformers' own function, through ours
    assert len(calls) == 2 * model.config.num_hidden_layers


@needs_kernel
def test_a_changed_header_builds_a_new_library(monkeypatch, tmp_path):
    import shutil

    sources = tmp_path / "csrc"
    shutil.copytree(native.CSRC, sources)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "CSRC", sources)
    monkeypatch.setattr(native, "SOURCES", sorted(sources.glob("*.c")))
    first = native._built()
    header = sources / "bf16.h"
    header.write_text(header.read_text() + "\n/* changed */\n")
    assert native._built() != first  # the headers count in the library's name, as the sources do
