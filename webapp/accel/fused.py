"""Layers of transformers' models swapped for fused kernels computing the same function.

transformers spells GPT-2's `gelu_new` out in eight tensor operations. Reading a prompt,
each operation streams the whole batch's activations through memory, and on a CPU with
few cores that traffic is a good part of the time. `F.gelu(approximate="tanh")` is the
same formula in one kernel, at most 1.2e-7 apart in float32: one pass instead of eight.

Llama's RMSNorm is seven operations with float32 copies between them. On bfloat16
activations (int4 and bfloat16 formats), where our C kernels can run (native.py), it
becomes one pass of the same arithmetic (`csrc/rms_norm.c`), in a decoding step (where
each small operation's fixed cost outweighs its arithmetic) and reading prompts (where
each streams the activations through memory). `F.rms_norm` was no substitute: it is no
single kernel on the CPU, and on bfloat16 activations it works in bfloat16, which raised
the embedded model's int4 perplexity on the quality test's text from 27.1 to 27.6.

Llama's MLP computes silu(gate) × up in two passes over its widest activations; ours
(`csrc/silu_mul.c`) is one, with the same values.

Llama's rotary embedding is five operations on a prompt's queries and keys (two
products, a concatenation, a negation, a sum), each a pass over them: a good share of a
prompt's time besides the products. On bfloat16 CPU tensors ours (`csrc/rotary.c`) is
one pass with the same roundings, the same values to the bit. transformers' attention
calls the module-level `apply_rotary_pos_emb` of modeling_llama, so that name is what is
replaced; anything ours does not take goes to transformers' own function.
"""
import torch
from transformers.activations import GELUTanh, NewGELUActivation, SiLUActivation
from transformers.models.llama import modeling_llama
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRMSNorm

from . import native
from .layers import replace_layers


def _runs_natively(tensor):
    """Whether our C kernels take `tensor`: bfloat16 on the CPU, with the library loaded."""
    return tensor.dtype == torch.bfloat16 and tensor.device.type == "cpu" and native.library() is not None


class NativeRMSNorm(LlamaRMSNorm):
    """LlamaRMSNorm by our C kernel on bfloat16 CPU activations, by transformers' code on anything else."""

    def forward(self, hidden_states):
        if _runs_natively(hidden_states) and self.weight.dtype == torch.bfloat16 and hidden_states.shape[-1] % 16 == 0:
            return native.rms_norm(hidden_states.contiguous(), self.weight, self.variance_epsilon)
        return super().forward(hidden_states)


class NativeLlamaMLP(LlamaMLP):
    """LlamaMLP whose silu(gate) × up is our C kernel's on bfloat16 CPU activations (transformers' code elsewhere)."""

    def forward(self, x):
        gate, up = self.gate_proj(x), self.up_proj(x)
        if _runs_natively(gate) and up.dtype == torch.bfloat16 and gate.shape == up.shape and gate.numel() % 16 == 0:
            return self.down_proj(native.silu_mul(gate.contiguous(), up.contiguous()))
        return self.down_proj(self.act_fn(gate) * up)


TRANSFORMERS_ROTARY = modeling_llama.apply_rotary_pos_emb


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    """transformers' apply_rotary_pos_emb, by our C kernel where it runs (bfloat16 on the CPU), else by theirs."""
    if unsqueeze_dim == 1 and _rotates_natively(q, cos, sin) and _rotates_natively(k, cos, sin):
        return native.rotary(q, cos, sin), native.rotary(k, cos, sin)
    return TRANSFORMERS_ROTARY(q, k, cos, sin, unsqueeze_dim)


def _rotates_natively(x, cos, sin):
    """Whether our kernel takes `x` [batch, heads, positions, dim] with cos and sin [batch or 1, positions, dim]."""
    return (_runs_natively(x) and x.dim() == 4 and x.stride(-1) == 1 and x.shape[-1] % 32 == 0
            and cos.dtype == sin.dtype == torch.bfloat16 and cos.shape == sin.shape and cos.stride() == sin.stride()
            and cos.dim() == 3 and cos.shape[0] in (1, x.shape[0]) and cos.shape[1:] == (x.shape[2], x.shape[3])
            and cos.stride(-1) == 1)


def fuse(model):
    """Swap `model`'s GPT-2 activations and (where our kernels run) Llama's norms, MLPs and rotary embedding; how many.

    The rotary embedding is replaced for every Llama model in this process (see the module's docstring) and counts
    once per attention layer of `model`.
    """
    gelu = GELUTanh()
    swapped = replace_layers(model, lambda child: gelu if type(child) is NewGELUActivation else None)
    if native.library() is None:
        return len(swapped)
    swapped.update(replace_layers(model, _native))
    attention = [module for module in model.modules() if isinstance(module, LlamaAttention)]
    if attention:
        modeling_llama.apply_rotary_pos_emb = apply_rotary_pos_emb
    return len(swapped) + len(attention)


def _native(child):
    """`child` itself with our kernels' forward, for a LlamaRMSNorm or a LlamaMLP with a SiLU; else None.

    Only the class changes: the module keeps its weights and layers (and exact subclasses of
    transformers' are left alone, as they may compute something else).
    """
    if type(child) is LlamaRMSNorm:
        child.__class__ = NativeRMSNorm
    elif type(child) is LlamaMLP and type(child.act_fn) is SiLUActivation:
        child.__class__ = NativeLlamaMLP
    else:
        return None
    return child
