"""Weight formats: which one a machine should use, and turning a loaded model into it.

On a CPU the choice decides the speed: float32 is exact; bfloat16 halves the bytes read
per step and runs on AMX/AVX-512-BF16 units where the CPU has them; int8 (dynamic
quantization of the linear layers: int8 weights, activations quantized per batch) reads a
quarter of the bytes and uses VNNI integer units; int4 (lowbit.py: weights packed in 4
bits, bfloat16 activations) reads about an eighth in a client's small steps, runs large
batches on dense bfloat16 copies, and is the format the embedded model ships in. GPT-2
keeps its weights in `Conv1D` modules, which neither bfloat16 kernels nor the quantizers
treat as linear layers, so they become `nn.Linear` first. `bench/formats.py` measures
speed and perplexity of each.
"""
import warnings

from ..accel.blocked import block_linear_layers, used_for
from ..accel.cpu import has_bf16_units
from ..accel.layers import replace_layers
from ..accel.lowbit import pack_model

FORMATS = ("float32", "bfloat16", "float16", "int8", "int4")


def pick_format(requested, device, flags=None, ships_4bit=False):
    """Resolve `--dtype auto` for `device`; check an explicit choice. Returns a name from FORMATS.

    `ships_4bit`: the weights were published in 4 bits (the embedded model), so int4 loses
    nothing they had, and auto takes it on CPUs with bfloat16 units.
    """
    if requested == "auto":
        if device.startswith("cuda"):
            import torch

            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        if device == "mps":
            return "float16"
        if not has_bf16_units(flags):
            return "float32"
        return "int4" if ships_4bit else "bfloat16"
    if requested not in FORMATS:
        raise ValueError(f"--dtype must be auto or one of {', '.join(FORMATS)}")
    if requested in ("int8", "int4") and device != "cpu":
        raise ValueError(f"--dtype {requested} runs on the CPU only; on a GPU use bfloat16 or float16")
    return requested


def torch_dtype(name):
    """The dtype weights are loaded in for format `name` (int8 and int4 load float32, then quantize)."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
            "int8": torch.float32, "int4": torch.float32}[name]


def apply_format(model, name, device):
    """Make a loaded model run in format `name`: Conv1D as Linear on the CPU, then int8 or int4 where asked.

    bfloat16 layers on the CPU get their weights laid out once for its matrix units (blocked.py).
    """
    if device == "cpu" and name != "float32":
        conv1d_to_linear(model)
    if name == "int8":
        quantize_int8(model)
    if name == "int4":
        pack_model(model)
    if used_for(name, device):
        block_linear_layers(model)  # int4: the layers its kernels cannot take, which stayed bfloat16
    return model


def conv1d_to_linear(model):
    """Replace every GPT-2 `Conv1D` (weight stored [in, out]) by the equivalent `nn.Linear` ([out, in]); in place."""
    from transformers.pytorch_utils import Conv1D

    replace_layers(model, lambda child: _as_linear(child) if isinstance(child, Conv1D) else None)
    return model


def _as_linear(conv1d):
    import torch

    inputs, outputs = conv1d.weight.shape
    linear = torch.nn.Linear(inputs, outputs, device=conv1d.weight.device, dtype=conv1d.weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(conv1d.weight.t())
        linear.bias.copy_(conv1d.bias)
    return linear


def quantize_int8(model):
    """Dynamic int8 quantization of the linear layers that tolerate it; in place. Returns the names quantized.

    Two kinds stay float32: the output layer (every logit, so every probability, goes through
    it) and the MLPs' down-projections (more inputs than outputs), whose inputs carry the
    large outlier activations that per-tensor int8 flattens. With them quantized too, the
    embedded model's perplexity tripled; without, it rises by a few per cent.
    """
    import torch

    output = model.get_output_embeddings()
    chosen = {name for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and module is not output
              and module.in_features <= module.out_features}
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; its fbgemm/oneDNN kernels are what runs fast today
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import quantize_dynamic

        quantize_dynamic(model, chosen, dtype=torch.qint8, inplace=True)
    return chosen
