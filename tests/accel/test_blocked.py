"""bfloat16 layers laid out once for the CPU's matrix units (webapp/accel/blocked.py): same products, same texts."""
import pytest
import torch
import torch.nn.functional as F
from conftest import build_tiny_gpt2, run

from webapp.accel import blocked
from webapp.accel.blocked import BlockedLinear, block_linear_layers, dense_layer
from webapp.config import cache_dir
from webapp.generation.engine import Engine
from webapp.models.loading import ModelSpec, estimate_weight_bytes, load_model, resolve_model
from webapp.web.protocol import SamplingSettings

pytestmark = pytest.mark.skipif(not blocked.available(), reason="no oneDNN bfloat16 units on this CPU")

GREEDY = SamplingSettings(n=1, temperature=0, length=12, stop_at="length", max_time=30)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 3, 9, 40, 300])
def test_a_blocked_layer_multiplies_as_f_linear_does(rows, bias):
    generator = torch.Generator().manual_seed(rows)
    linear = torch.nn.Linear(192, 80, bias=bias).bfloat16()
    layer = BlockedLinear.from_linear(linear)
    batch = torch.randn(2, rows + 5, 192, generator=generator).bfloat16()
    inputs = batch[:, -rows:, :]  # strided, as the output layer's input is when prompts are read together
    outputs = layer(inputs)
    expected = F.linear(inputs.contiguous(), linear.weight, linear.bias)
    assert outputs.shape == (2, rows, 80) and outputs.dtype == torch.bfloat16
    if rows <= 64:  # a decoding step's rows: to the bit (so were all of both models' shapes up to 64 rows)
        assert torch.equal(outputs, expected)
    else:  # a prompt's: now and then another summation order, so one bfloat16 rounding apart at most
        assert ((outputs.float() - expected.float()).abs() <= 2 ** -7 * expected.float().abs() + 1e-3).all()
    assert torch.equal(layer.weight, linear.weight), "the blocked weight converts back exactly"


def test_without_bfloat16_units_a_dense_layer_stays_a_plain_linear():
    weight = torch.randn(32, 64)
    plain = dense_layer(weight, flags={"avx2", "fma"})
    assert type(plain) is torch.nn.Linear and plain.weight.dtype == torch.bfloat16
    assert torch.equal(plain.weight, weight.bfloat16())
    assert type(dense_layer(weight)) is BlockedLinear
    assert not blocked.available({"avx2"}) and blocked.available({"amx_bf16"})


@pytest.fixture(scope="module")
def bfloat16_models():
    """The embedded model in bfloat16 twice: as the server loads it (blocked) and with its plain layers."""
    spec = resolve_model("embedded")
    served = load_model(spec, "cpu", "bfloat16", cache_root=cache_dir({}))
    with pytest.MonkeyPatch.context() as patch:  # a second copy as it was before this layout
        patch.setattr(blocked, "available", lambda flags=None: False)
        plain = load_model(spec, "cpu", "bfloat16", cache_root=cache_dir({}))
    return served, plain


def test_a_bfloat16_model_is_served_with_blocked_layers_and_writes_what_plain_layers_write(bfloat16_models):
    served, plain = bfloat16_models
    linear = [type(module) for module in served.model.modules() if "Linear" in type(module).__name__]
    assert set(linear) == {BlockedLinear} and len(linear) == 30 * 7 + 1  # 7 per layer and the output layer
    assert not any(isinstance(module, BlockedLinear) for module in plain.model.modules())
    assert block_linear_layers(served.model) == [], "nothing plain is left to lay out"
    texts = ["The history of the old town begins with", "Dear diary, today I"]
    for text in texts:
        assert run(Engine(served), text, GREEDY)[0].texts() == run(Engine(plain), text, GREEDY)[0].texts()
    ids = served.tokenizer(" ".join(texts), return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert torch.equal(served.model(ids).logits, plain.model(ids).logits)


def test_the_memory_estimate_counts_the_tied_output_layers_blocked_copy(tmp_path, embedded):
    build_tiny_gpt2(embedded.tokenizer, n_embd=64).save_pretrained(tmp_path)
    embedded.tokenizer.save_pretrained(tmp_path)
    spec = ModelSpec("tiny", str(tmp_path), "local")
    loaded = load_model(spec, "cpu", "bfloat16")
    held = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    held += sum(m.blocked.numel() * m.blocked.element_size() for m in loaded.model.modules()
                if isinstance(m, BlockedLinear))
    assert estimate_weight_bytes(spec, "bfloat16", device="cpu") == held
    assert estimate_weight_bytes(spec, "bfloat16", device="cuda") == loaded.parameters * 2  # no blocked copies there
