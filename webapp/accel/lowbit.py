"""Linear layers that keep their weights packed in 4 or 8 bits, for small decoding steps on the CPU.

A step of one client's options multiplies 3 rows by every weight matrix, so its time is
the time to read the weights from memory: fewer bytes per weight is the speed-up.
PyTorch's CPU kernels read packed weights directly: `_weight_int4pack_mm_for_cpu` (4 bits,
groups of GROUP weights sharing a scale and a zero point, the layout of GGUF's Q4_1, in
which the embedded model ships) and `_weight_int8pack_mm` (8 bits, one scale per output).
Their cost grows with every row, though, while a bfloat16 product on the AMX units hardly
notices 90 rows. So above a few rows (`small_batch_rows`: a class's batched step, a
prompt being read) a layer multiplies by its dense copy: the same packed values written
out in bfloat16, so both paths compute the same model and a text does not depend on
which one ran.

Where the CPU has AVX512-VNNI, the packed path is our own kernel (native.py): the same
weights, laid out for it, times activations rounded to 8 bits per group of 32; several
times as fast as PyTorch's kernels, and ahead of the dense copy up to more rows
(`VNNI_ROWS`), or at any number of rows where the CPU has no AMX tiles for the dense copy
to run on. Elsewhere it is PyTorch's.
"""
import torch

from . import native
from .blocked import BlockedLinear, dense_layer
from .cpu import has_amx
from .layers import replace_layers

GROUP = 32  # weights per 4-bit scale and zero point: GGUF's Q4_1 block, so the embedded model's weights fit exactly
# Rows up to which PyTorch's packed kernels beat a plain dense bfloat16 copy (F.linear). Their cost
# grows with the rows, the dense product's on the matrix units hardly does; they read 4 rows at a
# time, so 5 rows cost as much as 8 (measured: docs/performance.md, "Thresholds").
SMALL_BATCH_ROWS = 8
# Against a blocked copy (blocked.py) the dense side is faster, so packed stays ahead for one block
# of 4 rows only, in small 4-bit layers (under SMALL_LAYER_WEIGHTS) up to 8 (measured:
# docs/performance.md, "Thresholds").
KERNEL_BLOCK_ROWS = 4
SMALL_LAYER_WEIGHTS = 1 << 20
# Rows up to which the VNNI kernel beats the blocked dense copy, measured in the model: there the
# copy's bfloat16 weights (4 times the bytes) come from memory, not cache, so the kernel stays ahead
# far longer than a layer timed alone suggests. Large layers' dense products catch up sooner than
# small ones'; the 8-bit layers showed no loss at any count tried (measured: docs/performance.md, "Thresholds").
VNNI_ROWS = {(4, "small"): 36, (4, "large"): 24, (8, "small"): 40, (8, "large"): 40}
# Those crossings are against oneDNN on AMX tiles. Without them (CPUs with AVX-512 alone, virtual machines that hide
# the tiles) oneDNN's bfloat16 and float32 products fall well behind ours at any number of rows: there our kernel
# takes the large batches too (PackedLinear.packed_at_any_size), a prompt's 300 rows as a step's 3.
COMPUTE_DTYPE = torch.bfloat16  # the packed kernels take bfloat16 activations (their float32 path is slow)


class PackedLinear(torch.nn.Module):
    """A linear layer with packed 4- or 8-bit weights for small batches and their dense copy for large ones.

    (Without AMX tiles our kernel takes the large batches too, and no dense copy is kept.)
    """

    def __init__(self, bits, dense, packed, scales, bias, zeros=None, kernel="aten"):
        """`packed`, `scales` (and for 4 bits on "vnni", `zeros`): the weights as `kernel` reads them."""
        super().__init__()
        self.bits, self.kernel = bits, kernel
        self.out_features, self.in_features = dense.shape
        # without AMX tiles our kernel takes every batch (see VNNI_ROWS), and no dense copy is kept: it would be four
        # times the packed bytes (GPT-2 large: 1.5 GB), never multiplied
        self.packed_at_any_size = kernel == "vnni" and not has_amx()
        if self.packed_at_any_size:
            self.dense = None
            self.own_bias = None if bias is None else torch.nn.Parameter(bias.to(COMPUTE_DTYPE), requires_grad=False)
        else:
            self.dense = dense_layer(dense, bias)  # the large batches' layer: blocked for the matrix units if it can
        self.small_batch_rows = small_batch_rows(bits, dense.numel(), isinstance(self.dense, BlockedLinear), kernel)
        self.register_buffer("packed", packed)
        self.register_buffer("scales", scales)
        self.register_buffer("zeros", zeros)
        self._bind_kernel()

    def _bind_kernel(self):
        """Hand our kernel the layer's current tensors (again after `.to()` and the like replace them)."""
        weights = (self.packed, self.scales) + ((self.zeros,) if self.bits == 4 else ())
        self._kernel = (native.Layer(self.bits, weights, self.bias, self.in_features, self.out_features)
                        if self.kernel == "vnni" else None)

    def large_batch_product(self):
        """The product of contiguous bfloat16 rows [n, in] past `small_batch_rows`, without the module's call.

        The dense copy's (a blocked copy's product called directly: the module's call costs
        a good part of a product of this size, and a class's step of the embedded model makes 210),
        or our kernel's where the dense copy has no AMX tiles to run on.
        """
        if self.packed_at_any_size:
            return self._kernel
        return self.dense.multiply if isinstance(self.dense, BlockedLinear) else self.dense

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._bind_kernel()
        return self

    @property
    def weight(self):
        """The dense bfloat16 [out, in] weight the packed one stands for (unpacked on each read where none is kept)."""
        if self.dense is not None:
            return self.dense.weight
        if self.bits == 4:
            levels, scales_and_zeros = native.unpack_int4(self.packed, self.scales, self.zeros, self.out_features)
            return dequantize_int4(levels, scales_and_zeros)
        return dequantize_rows_int8(*native.unpack_int8(self.packed, self.scales, self.out_features))

    @property
    def bias(self):
        """The bias, held once (by the dense layer where there is one) and added on both paths."""
        return self.dense.bias if self.dense is not None else self.own_bias

    @classmethod
    def from_linear(cls, linear, bits):
        """Quantize `linear`'s weights (read in float32) to `bits` bits: 4 in groups, or 8 per output."""
        weight = linear.weight.detach().float()
        bias = None if linear.bias is None else linear.bias.detach().to(COMPUTE_DTYPE)
        kernel = "vnni" if native.library() is not None and native.takes(linear.in_features) else "aten"
        if bits == 4:
            levels, scales = quantize_int4(weight)
            dense = dequantize_int4(levels, scales)
            if kernel == "vnni":
                packed, scales, zeros = native.pack_int4(levels, scales)
                return cls(bits, dense, packed, scales, bias, zeros, kernel)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(levels, 1)
        else:
            packed, scales = quantize_rows_int8(weight)
            dense = dequantize_rows_int8(packed, scales)
            if kernel == "vnni":
                packed, scales = native.pack_int8(packed, scales)
        return cls(bits, dense, packed, scales, bias, kernel=kernel)

    def forward(self, inputs):
        """Multiply packed up to `small_batch_rows` rows (any, without AMX tiles), past them by the dense copy."""
        rows = inputs.reshape(-1, self.in_features)  # 2-D: a strided 3-D input sends F.linear down a slow path
        if rows.shape[0] > self.small_batch_rows and not self.packed_at_any_size:
            return self.dense(rows).reshape(*inputs.shape[:-1], self.out_features)
        rows = rows.to(COMPUTE_DTYPE).contiguous()
        if self._kernel is not None:  # ours: adds the bias itself
            return self._kernel(rows).reshape(*inputs.shape[:-1], self.out_features)
        if self.bits == 4:
            outputs = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.packed, GROUP, self.scales)
        else:
            outputs = torch.ops.aten._weight_int8pack_mm(rows, self.packed, self.scales)
        if self.bias is not None:
            outputs = outputs + self.bias
        return outputs.reshape(*inputs.shape[:-1], self.out_features)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, {self.kernel}"


def quantize_int4(weight):
    """Round a float32 [out, in] weight to 4-bit levels per GROUP inputs: (levels int32, scales_and_zeros).

    Each group maps its minimum to level 0 and its maximum to level 15, as Q4_1 does, so a
    weight that already is Q4_1 comes back with the same levels. The kernel reads a weight
    as (level - 8) × scale + zero, hence zero = minimum + 8 × scale.
    """
    outputs, inputs = weight.shape
    groups = weight.reshape(outputs, inputs // GROUP, GROUP)
    low, high = groups.amin(-1), groups.amax(-1)
    scale = ((high - low) / 15).clamp(min=torch.finfo(torch.float32).tiny)
    levels = ((groups - low[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.int32)
    zero = low + 8 * scale
    # the kernel's layout: [in / GROUP, out, (scale, zero)], in the activations' dtype
    scales_and_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().to(COMPUTE_DTYPE)
    return levels.reshape(outputs, inputs), scales_and_zeros


def dequantize_int4(levels, scales_and_zeros):
    """The dense bfloat16 weight a 4-bit layer stands for, exactly as the kernel reads it."""
    outputs, inputs = levels.shape
    scale, zero = scales_and_zeros.float().transpose(0, 1).unbind(-1)
    groups = levels.reshape(outputs, inputs // GROUP, GROUP).float()
    return ((groups - 8) * scale[..., None] + zero[..., None]).reshape(outputs, inputs).to(COMPUTE_DTYPE)


def quantize_rows_int8(weight):
    """Round a float32 [out, in] weight to 8 bits with one scale per output: (int8 weight, scales).

    (formats.quantize_int8 is another thing: int8's dynamic quantization of a whole model.)
    """
    scales = (weight.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny).to(COMPUTE_DTYPE)
    levels = (weight / scales.float()[:, None]).round().clamp(-127, 127).to(torch.int8)
    return levels, scales


def dequantize_rows_int8(levels, scales):
    """The dense bfloat16 weight an 8-bit layer stands for, exactly as the kernel reads it."""
    return (levels.float() * scales.float()[:, None]).to(COMPUTE_DTYPE)


def small_batch_rows(bits, weights, blocked, kernel="aten"):
    """Rows up to which a layer of `weights` packed in `bits` multiplies packed (by `kernel`), not by its dense copy."""
    if kernel == "vnni":
        return VNNI_ROWS[bits, "small" if weights < SMALL_LAYER_WEIGHTS else "large"]
    if not blocked:
        return SMALL_BATCH_ROWS
    return 2 * KERNEL_BLOCK_ROWS if bits == 4 and weights < SMALL_LAYER_WEIGHTS else KERNEL_BLOCK_ROWS


def bits_for(linear, output):
    """4 or 8 bits for a linear layer, or None where the kernels cannot take its shape (it stays bfloat16).

    The output layer gets 8 bits: every probability goes through it, and in 4 bits it
    raised the embedded model's perplexity by 3 %, in 8 bits by under 1 %. The 4-bit
    packing needs outputs in multiples of 16 and inputs in whole groups; the 8-bit kernel
    needs inputs in multiples of 16 (it crashes the process otherwise).
    """
    if not output and linear.in_features % GROUP == 0 and linear.out_features % 16 == 0:
        return 4
    return 8 if linear.in_features % 16 == 0 else None


def pack_model(model):
    """Pack the linear layers of a float32 model in place (see bits_for); the rest goes to bfloat16.

    Returns {layer name: bits} for the layers packed.
    """
    output = model.get_output_embeddings()

    def packed_layer(child):
        bits = bits_for(child, child is output) if isinstance(child, torch.nn.Linear) else None
        return PackedLinear.from_linear(child, bits) if bits else None

    packed = {name: layer.bits for name, layer in replace_layers(model, packed_layer).items()}
    for parameter in model.parameters():
        if parameter.is_floating_point():
            # .data keeps tied parameters tied; buffers (rotary frequencies) keep their float32
            parameter.data = parameter.data.to(COMPUTE_DTYPE)
    return packed
