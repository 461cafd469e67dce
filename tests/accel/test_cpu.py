"""CPU feature detection, and forcing a lower level so that every path runs on any machine."""
import pytest

from webapp.accel import cpu


@pytest.fixture
def level(monkeypatch):
    """Set TABWRITE_CPU_LEVEL for one test; the flags are read again before and after."""
    def force(value):
        monkeypatch.setenv(cpu.LEVEL_VARIABLE, value)
        cpu.cpu_flags.cache_clear()
        return cpu.cpu_flags()

    yield force
    monkeypatch.delenv(cpu.LEVEL_VARIABLE, raising=False)
    cpu.cpu_flags.cache_clear()


def test_the_flags_are_the_cpus_own_unless_a_level_is_forced(monkeypatch, level):
    monkeypatch.setattr(cpu, "_read_flags", lambda: ["sse2", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile",
                                                     "amx_bf16"])
    assert level("") == {"sse2", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}
    assert cpu.has_amx() and cpu.has_bf16_units()
    assert level("avx512") == {"sse2", "avx2", "fma", "avx512f", "avx512_bf16"}
    assert not cpu.has_amx() and cpu.has_bf16_units()
    assert level("avx2") == {"sse2", "avx2", "fma"}
    assert not cpu.has_amx() and not cpu.has_bf16_units()


def test_an_unknown_level_is_a_clear_error(level):
    with pytest.raises(ValueError, match="TABWRITE_CPU_LEVEL must be one of avx2, avx512"):
        level("avx9000")


def test_at_the_avx2_level_our_kernels_say_why_they_are_off(level):
    from webapp.accel import native

    level("avx2")
    assert "avx512f" in native.why_not()
