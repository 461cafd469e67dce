"""What this CPU can do, read from /proc/cpuinfo once: the kernels and formats that only some CPUs run ask here.

TABWRITE_CPU_LEVEL forces a lower level than the CPU has, so that every path can be run on
any machine (the tests do): `avx2` hides AVX-512 and AMX, `avx512` hides the AMX tiles.
"""
import functools
import os
from pathlib import Path

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with fast bfloat16 matrix units
AMX_CPU_FLAGS = frozenset({"amx_tile", "amx_bf16"})  # the tiles themselves (a virtual machine may hide them)


LEVEL_VARIABLE = "TABWRITE_CPU_LEVEL"
# what each forced level hides of the CPU's flags
HIDDEN_AT = {"avx2": ("avx512", "amx"), "avx512": ("amx",)}


@functools.cache  # read once: every packed layer asks whether the CPU has bfloat16 units
def cpu_flags():
    """The CPU's feature flags (Linux), less those TABWRITE_CPU_LEVEL hides; empty where they cannot be read."""
    level = os.environ.get(LEVEL_VARIABLE, "")
    if level and level not in HIDDEN_AT:
        raise ValueError(f"{LEVEL_VARIABLE} must be one of {', '.join(HIDDEN_AT)} (or unset), not {level!r}")
    hidden = HIDDEN_AT.get(level, ())
    return frozenset(flag for flag in _read_flags() if not flag.startswith(hidden))


def _read_flags():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def has_bf16_units(flags=None):
    """Whether the CPU (its /proc/cpuinfo `flags`, read here when not given) has bfloat16 matrix units."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def has_amx(flags=None):
    """Whether the CPU (its /proc/cpuinfo `flags`) has AMX tiles for bfloat16, on which oneDNN runs large products."""
    return AMX_CPU_FLAGS <= (cpu_flags() if flags is None else flags)
