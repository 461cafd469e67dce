"""A decoding step through all of a model's layers in one call to our C kernels (`csrc/decoder_step.c`).

A decoding step of the embedded model (30 Llama layers, 3 options) spent most of its
time outside its products: in running each layer as some 130 small tensor operations
(reshapes, copies, rotary embedding spelled out in seven operations, the attention's
regrouping) and the modules' Python around them. In C a layer is one pass: the same
4-bit products (vnni_linear.c); the norms, rotary embedding, activation and residuals
with transformers' roundings to bfloat16; the new keys and values written straight into
the cache's rows, and attention over them through the step's mask
(shared_prompt.OptionRows), in float32. GPT-2's blocks (GPT-2 large's architecture) go
the same way.

It takes a forward pass when the model is Llama's or GPT-2's, packed in 4 bits on our
kernel (the int4 format where the CPU has AVX512-VNNI), and the pass is a decoding step
with OptionRows, or a few more tokens of one text read on its cache, in few enough rows
for the packed path. A decoding step of more rows (a class's batch: 30 clients are 90
rows) multiplies by the layers' dense bfloat16 copies, oneDNN's products on the matrix
units, and goes layer by layer: between the products, our C code does the rest in four
calls a layer (`step_by_layers`) instead of transformers' hundred-odd operations.
Anything else (reading a whole prompt, other formats, beam search) goes through
transformers' forward.
"""
import torch
from torch import nn
from transformers.activations import GELUTanh, NewGELUActivation, SiLUActivation
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPastAndCrossAttentions
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP, GPT2Attention, GPT2Block, GPT2Model
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaMLP,
    LlamaModel,
    LlamaRMSNorm,
)

from ..generation import kvcache
from . import native
from .fused import NativeLlamaMLP, NativeRMSNorm
from .lowbit import PackedLinear


class NativeLlamaModel(LlamaModel):
    """LlamaModel whose decoding steps run through our C kernels where they can (see the module's docstring)."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                use_cache=None, option_rows=None, **kwargs):
        taken = _in_c(self, input_ids, attention_mask, position_ids, cache, inputs_embeds, option_rows, kwargs)
        if taken is not None:
            return taken
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache,
                               option_rows=option_rows, **kwargs)

    def _apply(self, fn, recurse=True):
        return _with_a_new_plan(super()._apply(fn, recurse))


class NativeGPT2Model(GPT2Model):
    """GPT2Model whose decoding steps run through our C kernels where they can (see the module's docstring)."""

    def forward(self, input_ids=None, cache=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, use_cache=None, option_rows=None, **kwargs):
        taken = None if token_type_ids is not None else _in_c(self, input_ids, attention_mask, position_ids, cache,
                                                              inputs_embeds, option_rows, kwargs)
        if taken is not None:
            return taken
        return super().forward(input_ids=input_ids, cache=cache, attention_mask=attention_mask,
                               token_type_ids=token_type_ids, position_ids=position_ids, inputs_embeds=inputs_embeds,
                               use_cache=use_cache, option_rows=option_rows, **kwargs)

    def _apply(self, fn, recurse=True):
        return _with_a_new_plan(super()._apply(fn, recurse))


SWAPS = {LlamaModel: NativeLlamaModel, GPT2Model: NativeGPT2Model}


def _in_c(model, input_ids, attention_mask, position_ids, cache, inputs_embeds, option_rows, extra):
    """The model's output for this forward pass computed by our C step, or None where transformers' forward runs it.

    Two kinds of pass: a decoding step (OptionRows: a token a row, each request's options
    as query rows of its cache row), and a few more tokens of one text read on its cache
    (a primed Tab's last two, the new words of a growing document), which are the same
    computation with the tokens as the query rows, each seeing the cache and the new
    tokens up to itself.
    """
    plan = step_plan(model)
    if plan is None or not plan.takes(input_ids, attention_mask, inputs_embeds, cache, extra):
        return None
    if option_rows is not None:
        if not option_rows.rows_are_queries or input_ids.shape[1] != 1:
            return None
        step = plan.step if input_ids.shape[0] <= plan.most_rows else plan.step_by_layers
        hidden = step(model, input_ids, position_ids, cache, option_rows.visible, option_rows.slots,
                      option_rows.slot_of_row)
        option_rows.calls += 1  # the options attended through their rows
        return plan.OUTPUT(last_hidden_state=hidden[:, None], cache=cache)
    length, count = cache.get_seq_length(), input_ids.shape[1]
    if input_ids.shape[0] != 1 or not length or count > plan.most_rows:
        return None
    visible = torch.ones((1, count, length + count), dtype=torch.bool)
    visible[0, :, length:] = torch.ones((count, count), dtype=torch.bool).tril()  # the new tokens up to itself
    if position_ids is None:
        position_ids = torch.arange(length, length + count)
    hidden = plan.step(model, input_ids.reshape(count, 1), position_ids.reshape(count, 1), cache, visible)
    return plan.OUTPUT(last_hidden_state=hidden[None], cache=cache)


def install(model):
    """Give `model`'s LlamaModel or GPT2Model our decoding step and its StepPlan; how many were given it.

    Only the class changes. The plan is made here, for the model as it is now (its format
    final), and made again for a copy handed to another engine.
    """
    found = [module for module in model.modules() if type(module) in SWAPS or type(module) in PLANS]
    for module in found:
        module.__class__ = SWAPS.get(type(module), type(module))
        _with_a_new_plan(module)
    return len(found)


def _with_a_new_plan(module):
    """`module` (one of ours) with a StepPlan made for its layers and weights as they are now."""
    module._step_plan = PLANS[type(module)].of(module) if native.library() is not None else None
    return module


def step_plan(model):
    """The StepPlan `install` made for `model`, or None (no plan: its layers are not what the C code computes)."""
    return model.__dict__.get("_step_plan")


class StepPlan:
    """What the C step needs of a model: its shape and, at every step, the addresses of its weights and caches."""

    FUNCTION = None  # the C function's name
    OUTPUT = BaseModelOutputWithPast  # what the model's own forward returns

    def __init__(self, layers, shape, epsilon, scale):
        """`shape`: hidden, heads, key heads, head size and MLP width, as the C code reads them."""
        self.layers, self.shape = layers, shape
        self.hidden, self.heads, self.kv_heads, self.head_dim, _ = shape
        self.epsilon, self.scale = epsilon, scale
        # past this, the products take the dense copies (lowbit.VNNI_ROWS; without AMX tiles still ours), layer by layer
        self.most_rows = min(p.small_batch_rows for layer in layers for p in self.projections(layer))
        self.steps = 0  # steps taken so far (tests and benchmarks read it)
        self.steps_by_layers = 0  # and those of more rows, taken layer by layer
        self.tiles = native.tiles()  # attention on the AMX tiles (else AVX-512); tests switch it
        # the weights' addresses, read once: the model's _apply (`.to()` and the like) makes a new plan
        self.weights = self._weight_table()

    def __deepcopy__(self, memo):
        return None  # it holds the original's addresses: a copy of the model gets a plan of its own from install

    @staticmethod
    def projections(layer):
        """A layer's products, in the order the C code's table has them."""
        raise NotImplementedError

    def takes(self, input_ids, attention_mask, inputs_embeds, cache, extra):
        """Whether the C code can take this forward pass (its kind is _in_c's to check)."""
        asked = {name for name, value in extra.items() if value is not None and value is not False}
        if asked - {"return_dict"}:
            return False  # anything more asked of the pass (hidden states, attentions, cross-attention): transformers'
        if input_ids is None or inputs_embeds is not None or attention_mask is not None or cache is None:
            return False
        if input_ids.dim() != 2 or not input_ids.numel():
            return False
        return all(isinstance(layer, kvcache.GrowingLayer) and layer.is_initialized
                   and layer.keys.dtype == torch.bfloat16 and layer.keys.device.type == "cpu"
                   for layer in cache.layers)

    def step(self, model, input_ids, position_ids, cache, visible, slots=None, slot_of_row=None):
        """The last hidden states [rows, width] for `input_ids` [rows, 1]; their keys and values go into `cache`.

        `visible` [requests, queries, columns], `slots` and `slot_of_row` as in
        shared_prompt.OptionRows (None: the batch rows are the requests' queries in order).
        """
        hidden, extra, shape, caches, buffers, slots, slot_of_row = self._prepare(
            model, input_ids, position_ids, cache, visible, slots, slot_of_row)
        table = torch.cat([self.weights, caches], dim=1)
        arguments = [hidden, shape, table, *extra, slots, slot_of_row, visible.contiguous()]
        status = getattr(native.library(), self.FUNCTION)(*[tensor.data_ptr() for tensor in arguments], self.epsilon,
                                                          self.scale, torch.get_num_threads())
        if status:
            raise MemoryError("the C decoding step could not allocate its working memory")
        self._commit(cache, buffers, visible.shape[2])
        self.steps += 1
        return self.final_norm(model)(hidden)

    def step_by_layers(self, model, input_ids, position_ids, cache, visible, slots=None, slot_of_row=None):
        """`step` for more rows than the packed products take: their large-batch products between our C pieces.

        A class's step (30 clients, 90 rows) went through transformers' layers, some 130
        operations each; here a layer is its products (oneDNN's on AMX tiles, else ours) and
        four calls to our C code: norms and residuals, attention with its rotary embedding
        and cache writes, and the MLP's activation.
        """
        hidden, extra, shape, caches, buffers, slots, slot_of_row = self._prepare(
            model, input_ids, position_ids, cache, visible, slots, slot_of_row)
        library, threads, rows = native.library(), torch.get_num_threads(), hidden.shape[0]
        visible = visible.contiguous()
        normed, mixed = torch.empty_like(hidden), hidden.new_empty((rows, self.heads * self.head_dim))
        cos, sin = [_address(part) for part in extra] or [None, None]
        added = None
        for layer, fields in zip(self.layers, caches):
            before_attention, before_mlp = self.norms(layer)
            self._add_norm(hidden, added, before_attention, normed)
            q, k, v = self.queries_keys_values(layer, normed)
            status = library.tabwrite_layer_attention(
                q.data_ptr(), q.stride(0), k.data_ptr(), v.data_ptr(), k.stride(0), shape.data_ptr(),
                fields.data_ptr(), cos, sin, slots.data_ptr(), slot_of_row.data_ptr(), visible.data_ptr(), self.scale,
                threads, mixed.data_ptr())
            if status:
                raise MemoryError("the C attention could not allocate its working memory")
            added = self.output_product(layer)(mixed)
            self._add_norm(hidden, added, before_mlp, normed)
            added = self.mlp(layer, normed)
        self._add_norm(hidden, added, (None, None), None)
        self._commit(cache, buffers, visible.shape[2])
        self.steps_by_layers += 1
        return self.final_norm(model)(hidden)

    def _prepare(self, model, input_ids, position_ids, cache, visible, slots, slot_of_row):
        """What both ways of stepping start from: the rows' embeddings, the shape, the cache's fields, the slots."""
        rows = input_ids.shape[0]
        if position_ids is None:
            position_ids = torch.full((rows, 1), cache.get_seq_length(), dtype=torch.long)
        hidden, extra = self.embed(model, input_ids, position_ids)
        requests, queries, columns = visible.shape
        shape_of_step = hidden.new_empty((requests, self.kv_heads, queries, self.head_dim))
        caches, buffers = self._cache_table(cache, shape_of_step, columns)
        slots = slots.reshape(-1) if slots is not None else torch.arange(requests * queries)
        slot_of_row = slot_of_row if slot_of_row is not None else torch.arange(rows)
        shape = torch.tensor([*self.shape, rows, requests, queries, columns - queries, len(self.layers),
                              int(self.tiles)])
        return hidden, extra, shape, caches, buffers, slots, slot_of_row

    def _add_norm(self, hidden, added, norm, normed):
        """hidden += added (unless None), then normed = norm(hidden) (unless norm's weight is None), in C."""
        weight, bias = norm
        native.library().tabwrite_add_norm(hidden.data_ptr(), _address(added), hidden.shape[0], self.hidden,
                                           _address(weight), _address(bias), self.epsilon, _address(normed),
                                           torch.get_num_threads())

    @staticmethod
    def _commit(cache, buffers, columns):
        """Let the cache's layers hold the buffers the step wrote its columns into."""
        for layer, (keys, values) in zip(cache.layers, buffers):
            layer.use_buffers(keys, values, columns)

    def _weight_table(self):
        """[layers, fields] int64: each layer's norms', then its products' addresses (levels, scales, zeros, bias)."""
        rows = []
        for layer in self.layers:
            # RMSNorm's weight (it has no bias), LayerNorm's weight and bias
            fields = [_address(tensor) for norm in self.norms(layer) for tensor in norm if tensor is not None]
            for projection in self.projections(layer):
                fields += [projection.packed.data_ptr(), projection.scales.data_ptr(), projection.zeros.data_ptr(),
                           _address(projection.bias)]
            rows.append(fields)
        return torch.tensor(rows, dtype=torch.int64)

    def _cache_table(self, cache, shape_of_step, columns):
        """[layers, 8] int64: each layer's cache buffers (room for the step) as the C code reads them; the buffers."""
        fields, buffers = [], []
        for held in cache.layers:
            (keys, values), length = held.room_for(shape_of_step, shape_of_step)
            if length + shape_of_step.shape[2] != columns:
                raise ValueError(f"the step's mask covers {columns} columns, the cache {length} + the step's")
            buffers.append((keys, values))
            fields.append([keys.data_ptr(), *keys.stride()[:3], values.data_ptr(), *values.stride()[:3]])
        return torch.tensor(fields, dtype=torch.int64), buffers


class LlamaPlan(StepPlan):
    """Llama's layers: RMSNorm, q, k and v with rotary embedding, o; RMSNorm, silu(gate) × up, down."""

    FUNCTION = "tabwrite_llama_step"

    @classmethod
    def of(cls, model):
        """A plan for a LlamaModel, or None where the C step would compute something else."""
        config, layers = model.config, list(model.layers)
        dim = layers[0].self_attn.head_dim if layers else 0
        shaped = (len(layers) == config.num_hidden_layers > 0 and _fits(dim, config.hidden_size)
                  and config.intermediate_size % 32 == 0
                  and config.num_attention_heads % config.num_key_value_heads == 0)
        if not shaped or model.embed_tokens.weight.dtype != torch.bfloat16:
            return None
        if not all(cls._computes_what_we_do(layer, config) for layer in layers):
            return None
        shape = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads, dim,
                 config.intermediate_size)
        return cls(layers, shape, config.rms_norm_eps, layers[0].self_attn.scaling)

    @staticmethod
    def projections(layer):
        attention, mlp = layer.self_attn, layer.mlp
        return [attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj,
                mlp.gate_proj, mlp.up_proj, mlp.down_proj]

    @staticmethod
    def norms(layer):
        """The layer's norms as (weight, bias): before attention, before the MLP."""
        return (layer.input_layernorm.weight, None), (layer.post_attention_layernorm.weight, None)

    @staticmethod
    def queries_keys_values(layer, normed):
        """The large-batch products' queries, keys and values [rows, width each] (keys and values alike in stride)."""
        attention = layer.self_attn
        return tuple(projection.large_batch_product()(normed)
                     for projection in (attention.q_proj, attention.k_proj, attention.v_proj))

    @staticmethod
    def output_product(layer):
        return layer.self_attn.o_proj.large_batch_product()

    @staticmethod
    def mlp(layer, normed):
        """down(silu(gate(x)) × up(x)), the large-batch products, the activation in C."""
        mlp = layer.mlp
        gate, up = mlp.gate_proj.large_batch_product()(normed), mlp.up_proj.large_batch_product()(normed)
        return mlp.down_proj.large_batch_product()(native.silu_mul(gate, up))

    def embed(self, model, input_ids, position_ids):
        """The rows' embeddings, and the rotary embedding's (cos, sin) at their positions, [rows, width] each."""
        rows = input_ids.shape[0]
        hidden = model.embed_tokens(input_ids).reshape(rows, self.hidden).contiguous()
        rotation = model.rotary_emb(hidden, position_ids)  # it computes any RoPE variant; the C code applies it
        return hidden, [part.reshape(rows, self.head_dim).contiguous() for part in rotation]

    @staticmethod
    def final_norm(model):
        return model.norm

    @classmethod
    def _computes_what_we_do(cls, layer, config):
        """Whether a layer is transformers' Llama layer with 4-bit products on our kernel and bfloat16 norms."""
        if type(layer) is not LlamaDecoderLayer or type(layer.self_attn) is not LlamaAttention:
            return False
        if type(layer.mlp) not in (LlamaMLP, NativeLlamaMLP) or type(layer.mlp.act_fn) is not SiLUActivation:
            return False
        norms = (layer.input_layernorm, layer.post_attention_layernorm)
        if any(type(norm) not in (LlamaRMSNorm, NativeRMSNorm) or norm.weight.dtype != torch.bfloat16
               or norm.variance_epsilon != config.rms_norm_eps for norm in norms):
            return False
        return _packed_for_us(cls.projections(layer))


class GPT2Plan(StepPlan):
    """GPT-2's blocks: LayerNorm, the joint q, k and v product, its projection; LayerNorm, fc, GELU (tanh), proj."""

    FUNCTION = "tabwrite_gpt2_step"
    OUTPUT = BaseModelOutputWithPastAndCrossAttentions

    @classmethod
    def of(cls, model):
        """A plan for a GPT2Model, or None where the C step would compute something else."""
        config, blocks = model.config, list(model.h)
        dim = config.hidden_size // config.num_attention_heads
        shaped = (len(blocks) == config.num_hidden_layers > 0 and _fits(dim, config.hidden_size)
                  and not config.scale_attn_by_inverse_layer_idx and not config.add_cross_attention)
        if not shaped or model.wte.weight.dtype != torch.bfloat16 or model.wpe.weight.dtype != torch.bfloat16:
            return None
        if not all(cls._computes_what_we_do(block, config) for block in blocks):
            return None
        wide = blocks[0].mlp.c_fc.out_features
        if wide % 32:
            return None
        shape = (config.hidden_size, config.num_attention_heads, config.num_attention_heads, dim, wide)
        return cls(blocks, shape, config.layer_norm_epsilon, blocks[0].attn.scaling)

    @staticmethod
    def projections(block):
        return [block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj]

    @staticmethod
    def norms(block):
        """The block's norms as (weight, bias): before attention, before the MLP."""
        return (block.ln_1.weight, block.ln_1.bias), (block.ln_2.weight, block.ln_2.bias)

    @staticmethod
    def queries_keys_values(block, normed):
        """The joint product's queries, keys and values: views of its rows, side by side in each."""
        return block.attn.c_attn.large_batch_product()(normed).chunk(3, dim=1)

    @staticmethod
    def output_product(block):
        return block.attn.c_proj.large_batch_product()

    @staticmethod
    def mlp(block, normed):
        """proj(gelu(fc(x))), the large-batch products, the activation in C."""
        wide = block.mlp.c_fc.large_batch_product()(normed)
        native.library().tabwrite_gelu_tanh(wide.data_ptr(), wide.numel(), torch.get_num_threads())
        return block.mlp.c_proj.large_batch_product()(wide)

    def embed(self, model, input_ids, position_ids):
        """The rows' token and position embeddings, added (in bfloat16, as transformers adds them)."""
        hidden = model.wte(input_ids) + model.wpe(position_ids)
        return hidden.reshape(input_ids.shape[0], self.hidden).contiguous(), []

    @staticmethod
    def final_norm(model):
        return model.ln_f

    @classmethod
    def _computes_what_we_do(cls, block, config):
        """Whether a block is transformers' GPT-2 block with 4-bit products on our kernel and bfloat16 norms."""
        if type(block) is not GPT2Block or type(block.attn) is not GPT2Attention or type(block.mlp) is not GPT2MLP:
            return False
        if type(block.mlp.act) not in (GELUTanh, NewGELUActivation):
            return False
        norms = (block.ln_1, block.ln_2)
        if any(type(norm) is not nn.LayerNorm or norm.bias is None or norm.weight.dtype != torch.bfloat16
               or norm.bias.dtype != torch.bfloat16 or norm.eps != config.layer_norm_epsilon for norm in norms):
            return False
        return _packed_for_us(cls.projections(block))


PLANS = {NativeLlamaModel: LlamaPlan, NativeGPT2Model: GPT2Plan}


def _fits(head_dim, hidden):
    """Whether the C code takes these sizes: heads of 32 to 128 values in 32s, a width in whole groups of 32."""
    return head_dim % 32 == 0 and 0 < head_dim <= 128 and hidden % 32 == 0


def _packed_for_us(projections):
    return all(isinstance(p, PackedLinear) and p.bits == 4 and p.kernel == "vnni"
               and (p.bias is None or p.bias.dtype == torch.bfloat16) for p in projections)


def _address(tensor):
    return 0 if tensor is None else tensor.data_ptr()
