"""Optional speed: C kernels, packed and fused layers, the C decoding step; one entry point, `install(model)`.

May import generation/ (the cache and attention seams it speeds up); never web/, hosting/, serving/, models/ or Flask.
Without it (TABWRITE_NATIVE=0, or a CPU it cannot serve) the product is whole.
"""
from ..generation import shared_prompt
from . import decoder_step, fused, prompt_attention


def install(model):
    """Make a loaded model (its weight format final) faster where this machine can: in place, idempotent.

    Fused activations and (with our kernels) fused norms and MLPs, our C decoding step, prompt
    attention on the AMX tiles, and a dense input for the output layer. Each part checks for
    itself what the CPU and the compiled kernels allow (native.library(), native.tiles()).
    """
    shared_prompt.use_prompt_attention(prompt_attention)
    fused.fuse(model)
    decoder_step.install(model)
    _feed_densely(model.get_output_embeddings())
    return model


def _feed_densely(layer):
    """Lay out the output layer's input densely before it multiplies.

    Prompts read together keep each one's last two positions: a strided slice of the
    batch. On such a 3-D input, bfloat16 `F.linear` takes a path that copies the whole
    output weight once per prompt, which costs far more than the product itself.
    """
    if layer is not None and not getattr(layer, "_fed_densely", False):
        layer.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))
        layer._fed_densely = True
