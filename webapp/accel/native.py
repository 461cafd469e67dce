"""Our C kernels for the CPU (`webapp/accel/csrc/`), compiled here with the machine's C compiler and loaded with ctypes.

Three things PyTorch and transformers do slowly on this 2-core CPU:

- **Packed 4- and 8-bit layers at a few rows** (`csrc/vnni_linear.c`, `Layer`). A decoding
  step multiplies 3 rows by every weight. PyTorch's packed kernels
  (`_weight_int4pack_mm_for_cpu`, `_weight_int8pack_mm`) turn each weight back into a
  float before multiplying, and that work, not memory, sets their pace: they read the
  packed weights far slower than memory could deliver them. Ours rounds each row of
  activations to 8 bits per group of 32 (a scale per group, as GGUF's Q8_0 does) and
  multiplies bytes by bytes with AVX512-VNNI, 64 products an instruction, applying the
  weights' scales once per group, so that reading the weights is what is left to wait for.
  The weights are the same; the activations' 8-bit rounding adds about 0.5 % of relative
  error to a product (bfloat16 alone: 0.25 %).
- **Llama's RMSNorm and its MLP's silu(gate) × up on bfloat16** (`csrc/rms_norm.c`,
  `csrc/silu_mul.c`; `rms_norm`, `silu_mul`, used by fused.py): transformers spells them
  in seven and two operations with copies between them; ours are one pass each,
  computing the same values (see fused.py).
- **A decoding step as a whole** (`csrc/decoder_step.c`, used by decoder_step.py): each
  layer's hundred-odd small tensor operations cost more than its products; in C a
  Llama or GPT-2 layer is one pass, built from the pieces above (`csrc/kernels.h`).
- **Attention on the AMX tiles** (`csrc/attention.c` for the step, `csrc/prompt_attention.c`
  for reading prompts, used by prompt_attention.py; `tiles`): 16 queries or query heads
  by 16 keys in one tile product, where AVX-512's bfloat16 dot products set the step's
  attention's pace and PyTorch's CPU attention ran far below the tiles' speed.

The sources are compiled together once per machine into the cache folder (quick enough
for a first use), and their OpenMP threads are PyTorch's own (the same libgomp). Where
the CPU lacks AVX512-VNNI or AVX512-BF16, no compiler is found, or TABWRITE_NATIVE=0,
`library()` is None and everything runs as PyTorch and transformers have it.
"""
import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from .cpu import cpu_flags, has_amx

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = sorted(CSRC.glob("*.c"))
CPU_FLAGS = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "f16c"})
COMPILE = ["-O3", "-fopenmp", "-shared", "-fPIC", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni",
           "-mavx512bf16", "-mf16c", "-mfma", "-mamx-tile", "-mamx-bf16"]  # AMX only where tiles() says so
GROUP = 32  # inputs per activation scale, and per weight scale in 4 bits
BLOCK = 16  # outputs per vector: the weights are laid out, and padded, in blocks of 16 outputs
ENABLED_VARIABLE = "TABWRITE_NATIVE"
TILES_VARIABLE = "TABWRITE_TILES"

log = logging.getLogger(__name__)


@functools.cache
def library():
    """The loaded kernels (ctypes), or None where they cannot run here (see `why_not`)."""
    reason = why_not()
    if reason:
        log.info("our C kernels are off (PyTorch's serve instead): %s", reason)
        return None
    try:
        lib = ctypes.CDLL(str(_built()))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", None) or error  # the compiler's own words, where it said any
        log.warning("our C kernels are off (PyTorch's serve instead): building them failed: %s", detail)
        return None
    pointer, number = ctypes.c_void_p, ctypes.c_int
    lib.tabwrite_int4_linear.argtypes = [pointer, number, number, number, pointer, pointer, pointer, pointer,
                                         pointer, number]
    lib.tabwrite_int8_linear.argtypes = [pointer, number, number, number, pointer, pointer, pointer, pointer,
                                         number]
    lib.tabwrite_rms_norm.argtypes = [pointer, ctypes.c_long, number, pointer, ctypes.c_float, pointer, number]
    lib.tabwrite_rms_norm.restype = None
    lib.tabwrite_silu_mul.argtypes = [pointer, pointer, ctypes.c_long, pointer, number]
    lib.tabwrite_silu_mul.restype = None
    lib.tabwrite_rotary.argtypes = [pointer] * 8 + [number]
    lib.tabwrite_rotary.restype = None
    lib.tabwrite_llama_step.argtypes = [pointer] * 8 + [ctypes.c_float, ctypes.c_float, number]
    lib.tabwrite_gpt2_step.argtypes = [pointer] * 6 + [ctypes.c_float, ctypes.c_float, number]
    lib.tabwrite_tiles_ready.argtypes = []
    lib.tabwrite_add_norm.argtypes = [pointer, pointer, number, number, pointer, pointer, ctypes.c_float, pointer,
                                      number]
    lib.tabwrite_add_norm.restype = None
    lib.tabwrite_gelu_tanh.argtypes = [pointer, ctypes.c_long, number]
    lib.tabwrite_gelu_tanh.restype = None
    lib.tabwrite_layer_attention.argtypes = ([pointer, ctypes.c_long, pointer, pointer, ctypes.c_long] + [pointer] * 7
                                             + [ctypes.c_float, number, pointer])
    lib.tabwrite_prompt_attention.argtypes = [pointer] * 9 + [ctypes.c_float, pointer, number]
    return lib


@functools.cache
def tiles():
    """Whether our attention may use the CPU's AMX tiles: the decoding step's (csrc/attention.c), and reading prompts'.

    They need the CPU's amx_tile and amx_bf16, Linux's leave to use them (asked for here,
    once), and TABWRITE_TILES not 0; without them the step's attention runs on AVX-512 and
    prompts' on PyTorch's SDPA.
    """
    if library() is None or os.environ.get(TILES_VARIABLE, "1").lower() in ("0", "off", "no", "false"):
        return False
    return has_amx() and library().tabwrite_tiles_ready() == 1


def tile_parts():
    """How many parts of attention our step has computed on the tiles in this process (tests read it)."""
    return ctypes.c_long.in_dll(library(), "tabwrite_tile_parts").value


def why_not(flags=None):
    """Why the kernels cannot run here (switched off, CPU, compiler), or '' when they can."""
    if os.environ.get(ENABLED_VARIABLE, "1").lower() in ("0", "off", "no", "false"):
        return f"{ENABLED_VARIABLE} switches them off"
    missing = CPU_FLAGS - (cpu_flags() if flags is None else flags)
    if missing:
        return "the CPU lacks " + ", ".join(sorted(missing))
    if not _compiler():
        return "no C compiler (cc or $CC) was found"
    return ""


def takes(in_features):
    """Whether a layer with `in_features` inputs fits the kernels (whole groups of 32; outputs are padded)."""
    return in_features % GROUP == 0


def _compiler():
    return shutil.which(os.environ.get("CC", "cc"))


def _cache_folder():
    """Where compiled kernels are kept: tabwrite/native in the user's cache folder (XDG_CACHE_HOME honoured)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tabwrite" / "native"


def _built():
    """The compiled library in the cache folder, compiling it first when these sources and flags are new."""
    code = sorted(CSRC.glob("*.[ch]"))  # the headers too: a change to one rebuilds
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in code) + " ".join(COMPILE).encode())
    target = _cache_folder() / f"tabwrite-{digest.hexdigest()[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # compiled beside the target, then renamed: another process building at once finds a whole file or none
        with tempfile.TemporaryDirectory(dir=target.parent) as folder:
            partial = Path(folder) / target.name
            subprocess.run([_compiler(), *COMPILE, "-o", str(partial), *map(str, SOURCES)], check=True,
                           capture_output=True, text=True)
            os.replace(partial, target)
    return target


def pack_int4(levels, scales_and_zeros):
    """Levels [out, in] (0..15) and lowbit's scales_and_zeros [in / 32, out, 2] as the kernel reads them.

    Returns (levels uint8 [blocks, groups, 4, 16, 4]: two per byte, scales, zeros bfloat16 [blocks, groups, 16]).
    """
    outputs, inputs = levels.shape
    blocks, groups = -(-outputs // BLOCK), inputs // GROUP
    padding = blocks * BLOCK - outputs
    grouped = torch.nn.functional.pad(levels.to(torch.uint8), (0, 0, 0, padding))
    grouped = grouped.reshape(blocks, BLOCK, groups, GROUP).transpose(1, 2)  # [blocks, groups, output, input]
    # vector j: inputs 4j..4j+3 in the low nibbles, 16+4j..16+4j+3 in the high ones, byte 4 x output + input
    low = grouped[..., :16].reshape(blocks, groups, BLOCK, 4, 4).transpose(2, 3)
    high = grouped[..., 16:].reshape(blocks, groups, BLOCK, 4, 4).transpose(2, 3)
    packed = (low | (high << 4)).contiguous()
    scale, zero = torch.nn.functional.pad(scales_and_zeros, (0, 0, 0, padding)).unbind(-1)  # [groups, out]
    return packed, _by_block(scale, blocks), _by_block(zero, blocks)


def _by_block(values, blocks):
    """[groups, blocks x 16] as [blocks, groups, 16], contiguous."""
    return values.reshape(values.shape[0], blocks, BLOCK).transpose(0, 1).contiguous()


def unpack_int4(packed, scales, zeros, outputs):
    """pack_int4's arguments back from what it returned: (levels uint8 [outputs, in], scales_and_zeros)."""
    blocks, groups = packed.shape[:2]
    low = (packed & 0x0F).transpose(2, 3).reshape(blocks, groups, BLOCK, 16)  # [blocks, groups, output, input]
    high = (packed >> 4).transpose(2, 3).reshape(blocks, groups, BLOCK, 16)
    grouped = torch.cat([low, high], dim=-1).transpose(1, 2)  # [blocks, output, groups, input]
    levels = grouped.reshape(blocks * BLOCK, groups * GROUP)[:outputs]
    scale, zero = (values.transpose(0, 1).reshape(groups, blocks * BLOCK)[:, :outputs] for values in (scales, zeros))
    return levels, torch.stack([scale, zero], dim=-1)


def pack_int8(levels, scales):
    """int8 levels [out, in] and their scales [out] as the kernel reads them: (uint8 weights + 128, float32 scales)."""
    outputs, inputs = levels.shape
    blocks, groups = -(-outputs // BLOCK), inputs // GROUP
    padding = blocks * BLOCK - outputs
    shifted = (torch.nn.functional.pad(levels, (0, 0, 0, padding)).to(torch.int16) + 128).to(torch.uint8)
    # vector j of a group: inputs 4j..4j+3 of each of the 16 outputs, byte 4 x output + input
    packed = shifted.reshape(blocks, BLOCK, groups, 8, 4).permute(0, 2, 3, 1, 4).contiguous()
    return packed, torch.nn.functional.pad(scales.float(), (0, padding)).contiguous()


def unpack_int8(packed, scales, outputs):
    """pack_int8's arguments back from what it returned: (int8 levels [outputs, in], float32 scales [outputs])."""
    blocks, groups = packed.shape[:2]
    shifted = packed.permute(0, 3, 1, 2, 4).reshape(blocks * BLOCK, groups * GROUP)[:outputs]
    return (shifted.to(torch.int16) - 128).to(torch.int8), scales[:outputs]


class Layer:
    """A layer's packed weights bound to our kernel: call it on contiguous bfloat16 rows [n, in] for [n, out].

    A plain object, so that a decoding step's 200 calls pay for no module machinery:
    through nn.Module attributes and keyword plumbing, PackedLinear.forward cost a few
    times what the kernel itself does.
    """

    __slots__ = ("function", "weights", "bias", "in_features", "out_features")

    def __init__(self, bits, weights, bias, in_features, out_features):
        """`weights`: what pack_int4 (4 bits) or pack_int8 (8 bits) returned; `bias` bfloat16 [out] or None."""
        self.function = library().tabwrite_int4_linear if bits == 4 else library().tabwrite_int8_linear
        self.weights, self.bias = tuple(weights), bias
        self.in_features, self.out_features = in_features, out_features

    def __call__(self, rows):
        outputs = torch.empty((rows.shape[0], self.out_features), dtype=torch.bfloat16)
        # addresses read at each call: a tensor swapped for another (`.data =`) is never read stale
        status = self.function(rows.data_ptr(), rows.shape[0], self.in_features, self.out_features,
                               *[weight.data_ptr() for weight in self.weights], _address(self.bias),
                               outputs.data_ptr(), torch.get_num_threads())
        if status:
            raise MemoryError("the packed kernel could not allocate its working memory")
        return outputs


def rms_norm(rows, weight, epsilon):
    """Llama's RMSNorm of contiguous bfloat16 `rows` [..., width] (width a multiple of 16) by a bfloat16 `weight`."""
    outputs = torch.empty_like(rows)
    library().tabwrite_rms_norm(rows.data_ptr(), rows.numel() // rows.shape[-1], rows.shape[-1], weight.data_ptr(),
                                epsilon, outputs.data_ptr(), torch.get_num_threads())
    return outputs


def silu_mul(gate, up):
    """silu(gate) × up (Llama's MLP) of two contiguous bfloat16 tensors of one shape, size a multiple of 16."""
    outputs = torch.empty_like(gate)
    library().tabwrite_silu_mul(gate.data_ptr(), up.data_ptr(), gate.numel(), outputs.data_ptr(),
                                torch.get_num_threads())
    return outputs


def rotary(x, cos, sin):
    """Llama's rotary embedding of bfloat16 `x` [batch, heads, positions, dim] by cos and sin [batch, positions, dim].

    `x` may be a transposed view (dim contiguous, a multiple of 32); the result has its layout.
    """
    out = torch.empty_like(x)
    strides = [torch.tensor(tensor.stride()[:3]) for tensor in (x, out)]
    batch_stride = cos.stride(0) if cos.shape[0] > 1 else 0  # one batch of positions for every row
    cos_strides, shape = torch.tensor([batch_stride, cos.stride(1)]), torch.tensor(x.shape)
    library().tabwrite_rotary(x.data_ptr(), strides[0].data_ptr(), out.data_ptr(), strides[1].data_ptr(),
                              cos.data_ptr(), sin.data_ptr(), cos_strides.data_ptr(), shape.data_ptr(),
                              torch.get_num_threads())
    return out


def _address(tensor):
    return None if tensor is None else tensor.data_ptr()
