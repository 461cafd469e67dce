"""bfloat16 linear layers whose weights are laid out once for the CPU's matrix units.

`F.linear` hands oneDNN a plain [out, in] weight, and oneDNN rearranges it into the
blocked layout its AMX/AVX-512 kernels read, on every call. Doing that once when the
model loads (`torch.ops.mkldnn._reorder_linear_weight`, as torch.compile's freezing
does) and multiplying with `torch.ops.mkldnn._linear_pointwise` spares every product of
every step and every prompt that rearranging, which was a good part of a small product's
cost. The values are the same: the blocked weight converts back exactly, and the product
equals F.linear's to the bit for up to 64 rows (every shape of both models; a decoding
step); reading a prompt, an element now and then comes out one bfloat16 rounding apart
(another summation order).
"""
import torch

from .cpu import has_bf16_units
from .layers import replace_layers

DTYPE = torch.bfloat16


def available(flags=None):
    """Whether this PyTorch and CPU (its /proc/cpuinfo `flags`) can run blocked bfloat16 layers."""
    return (torch.backends.mkldnn.is_available() and has_bf16_units(flags)
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def used_for(weight_format, device):
    """Whether a model in `weight_format` on `device` gets blocked layers (bfloat16 ones, int4's dense copies)."""
    return device == "cpu" and weight_format in ("bfloat16", "int4") and available()


class BlockedLinear(torch.nn.Module):
    """A bfloat16 linear layer holding its weight in oneDNN's blocked layout."""

    def __init__(self, weight, bias=None):
        """`weight` [out, in] (any float dtype; kept in bfloat16), `bias` [out] or None."""
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # an opaque oneDNN tensor: no storage to view, so it is a buffer, and `weight` converts it back
        self.register_buffer("blocked", torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(DTYPE), None),
                             persistent=False)
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().to(DTYPE), requires_grad=False)

    @classmethod
    def from_linear(cls, linear):
        return cls(linear.weight, linear.bias)

    @property
    def weight(self):
        """The dense [out, in] weight, converted back on each read (for tests and inspection)."""
        return self.blocked.to_dense()

    def forward(self, inputs):
        rows = inputs.reshape(-1, self.in_features).to(DTYPE).contiguous()
        return self.multiply(rows).reshape(*inputs.shape[:-1], self.out_features)

    def multiply(self, rows):
        """`rows` (contiguous bfloat16 [n, in]) times the weight, plus the bias: [n, out], without the module's call."""
        return torch.ops.mkldnn._linear_pointwise(rows, self.blocked, self.bias, "none", [], "")

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, blocked"


def dense_layer(weight, bias=None, flags=None):
    """A bfloat16 layer multiplying by `weight`: blocked where available, else a plain nn.Linear."""
    if available(flags):
        return BlockedLinear(weight, bias)
    out_features, in_features = weight.shape
    # shapes only (no random initialisation to throw away), then the given values
    linear = torch.nn.Linear(in_features, out_features, bias=bias is not None, device="meta", dtype=DTYPE)
    linear.weight = torch.nn.Parameter(weight.detach().to(DTYPE), requires_grad=False)
    if bias is not None:
        linear.bias = torch.nn.Parameter(bias.detach().to(DTYPE), requires_grad=False)
    return linear


def block_linear_layers(model):
    """Replace every bfloat16 nn.Linear of a CPU model by a BlockedLinear, in place; returns their names.

    A tied output layer (GPT-2's, the embedded model's) gets a blocked copy of its own, the
    input embedding keeps the plain one: the output matrix is in memory twice.
    """
    return list(replace_layers(model, lambda child: BlockedLinear.from_linear(child)
                               if type(child) is torch.nn.Linear and child.weight.dtype == DTYPE else None))
