"""Finding and loading models: local directories, the embedded model, clear errors."""
import pytest
import torch
from conftest import build_tiny_gpt2

from webapp.accel import fused
from webapp.models import loading as models
from webapp.models.formats import conv1d_to_linear, pick_format
from webapp.models.loading import ModelError, load_model, pick_device, pick_dtype, resolve_model, wrap_model


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No Hub and an empty Hugging Face cache, as on this machine."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))


def test_auto_falls_back_to_embedded_with_a_warning(offline):
    spec = resolve_model("auto")
    assert spec.source == "embedded"
    assert "gpt2-large" in spec.warning and "embedded" in spec.warning


def test_an_unreachable_hub_model_is_a_clear_error(offline):
    with pytest.raises(ModelError) as caught:
        resolve_model("someone/not-downloaded")
    message = str(caught.value)
    assert "someone/not-downloaded" in message
    assert "--model embedded" in message


def test_a_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match="save_pretrained"):
        resolve_model(str(tmp_path))


def test_a_saved_directory_loads(tmp_path, embedded):
    build_tiny_gpt2(embedded.tokenizer).save_pretrained(tmp_path)
    embedded.tokenizer.save_pretrained(tmp_path)
    spec = resolve_model(str(tmp_path))
    assert spec.source == "local"
    loaded = load_model(spec, device="cpu", dtype="float32", max_context=4096)
    assert loaded.device == "cpu" and loaded.dtype == "float32"
    assert loaded.max_context == 256  # capped at the model's own window
    assert loaded.eos_ids >= {embedded.tokenizer.eos_token_id}


def test_embedded_model_comes_from_the_package_file():
    path = models.embedded_gguf_path()
    assert path.suffix == ".gguf" and path.is_file()
    assert resolve_model("embedded").source == "embedded"


def test_embedded_model_is_converted_once_and_cached(embedded, tmp_path):
    from webapp.config import cache_dir

    folder = models.ensure_embedded(cache_dir({}))
    assert (folder / "model.safetensors").is_file()
    assert models.ensure_embedded(cache_dir({})) == folder  # second call: no conversion
    assert embedded.name == models.EMBEDDED_NAME


def test_devices_and_dtypes():
    assert pick_device("auto") in ("cpu", "cuda", "mps")
    assert pick_format("auto", "cpu", flags={"avx2", "avx512f"}) == "float32"
    assert pick_format("auto", "cpu", flags={"avx512f", "amx_bf16"}) == "bfloat16"
    assert pick_format("auto", "cpu", flags={"avx512_bf16"}) == "bfloat16"
    # weights published in 4 bits (the embedded model) run in int4 where the CPU has bfloat16 units
    assert pick_format("auto", "cpu", flags={"amx_bf16"}, ships_4bit=True) == "int4"
    assert pick_format("auto", "cpu", flags={"avx2"}, ships_4bit=True) == "float32"
    embedded_spec = resolve_model("embedded")
    assert pick_dtype("auto", "cpu", embedded_spec) == ("int4" if pick_dtype("auto", "cpu") == "bfloat16"
                                                         else "float32")
    assert pick_dtype("auto", "cpu") in ("float32", "bfloat16")
    assert pick_dtype("bfloat16", "cpu") == "bfloat16" and pick_dtype("int8", "cpu") == "int8"
    with pytest.raises(ModelError, match="--dtype"):
        pick_dtype("int3", "cpu")
    with pytest.raises(ModelError, match="CPU only"):
        pick_dtype("int8", "cuda")
    with pytest.raises(ModelError, match="CPU only"):
        pick_dtype("int4", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA GPU"):
            pick_device("cuda")


def test_a_model_in_the_hub_cache_loads_offline(offline, tmp_path, embedded):
    # lay out a Hugging Face cache entry by hand, as a past download would have left it
    repo = tmp_path / "hub" / "models--classroom--tiny-gpt2"
    snapshot = repo / "snapshots" / "0123abcd"
    build_tiny_gpt2(embedded.tokenizer).save_pretrained(snapshot)
    embedded.tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    spec = resolve_model("classroom/tiny-gpt2")
    assert spec.source == "hub" and spec.offline
    loaded = load_model(spec, device="cpu", dtype="float32")
    assert loaded.name == "classroom/tiny-gpt2"
    assert loaded.model.config.n_layer == 2


def test_gpt2_conv1d_layers_become_linear_layers_that_compute_the_same(embedded):
    model = build_tiny_gpt2(embedded.tokenizer)
    ids = torch.tensor([[5, 17, 300, 4000, 12]])
    with torch.inference_mode():
        before = model(input_ids=ids).logits
        conv1d_to_linear(model)
        after = model(input_ids=ids).logits
    kinds = {type(module).__name__ for module in model.modules()}
    assert "Conv1D" not in kinds and "Linear" in kinds
    assert torch.allclose(before, after, atol=1e-5)


def test_the_engine_computes_gpt2s_activation_in_one_fused_operation_and_the_same_values(embedded):
    from transformers.activations import GELUTanh, NewGELUActivation

    from webapp.generation.engine import Engine

    model = build_tiny_gpt2(embedded.tokenizer)
    ids = torch.tensor([[5, 17, 300, 4000, 12]])
    with torch.inference_mode():
        before = model(input_ids=ids).logits
        assert fused.fuse(model) == model.config.n_layer
        after = model(input_ids=ids).logits
    assert torch.allclose(before, after, atol=1e-5)
    fresh = build_tiny_gpt2(embedded.tokenizer)
    Engine(wrap_model(fresh, embedded.tokenizer, "tiny"))
    kinds = {type(module) for module in fresh.modules()}
    assert NewGELUActivation not in kinds and GELUTanh in kinds


@pytest.mark.parametrize("weight_format", ["bfloat16", "int8", "int4"])
def test_a_gpt2_folder_loads_in_each_cpu_format_and_stays_close_to_float32(tmp_path, embedded, weight_format):
    folder = tmp_path / "gpt2"
    build_tiny_gpt2(embedded.tokenizer, n_embd=128).save_pretrained(folder)
    embedded.tokenizer.save_pretrained(folder)
    spec = resolve_model(str(folder))
    exact = load_model(spec, device="cpu", dtype="float32")
    packed = load_model(spec, device="cpu", dtype=weight_format)
    assert packed.dtype == weight_format and packed.parameters == exact.parameters
    ids = torch.tensor([list(range(100, 140))])
    with torch.inference_mode():
        reference = torch.softmax(exact.model(input_ids=ids).logits.float(), dim=-1)
        approximate = torch.softmax(packed.model(input_ids=ids).logits.float(), dim=-1)
    assert (reference - approximate).abs().max() < 0.05, "the same model, a little less exact"
    assert not any(type(m).__name__ == "Conv1D" for m in packed.model.modules())


def test_the_engine_writes_with_an_int8_model_exactly_as_its_generate(tmp_path, embedded):
    from webapp.generation.engine import Engine
    from webapp.web.protocol import SamplingSettings

    folder = tmp_path / "gpt2"
    build_tiny_gpt2(embedded.tokenizer, n_embd=128).save_pretrained(folder)
    embedded.tokenizer.save_pretrained(folder)
    loaded = load_model(resolve_model(str(folder)), device="cpu", dtype="int8")
    assert any("quantized" in type(m).__module__ for m in loaded.model.modules())
    engine = Engine(loaded)
    generation, _ = engine.start("Once", SamplingSettings(n=2, temperature=0, length=8, stop_at="length"))
    while not generation.finished:
        engine.step(generation)
    prompt = torch.tensor([generation.prompt_ids])
    expected = loaded.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
                                     do_sample=False, pad_token_id=engine.pad_id)
    assert generation.options[0].tokens == expected[0, prompt.shape[1]:].tolist()
