"""twin.prefer_wide_vectors: XLA's 512-bit vectors asked for on AVX-512 CPUs only, never over the user's flags."""
from __future__ import annotations

from twin import prefer_wide_vectors

AVX512 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx2 avx512f avx512dq\n\nprocessor\t: 1\nflags\t\t: fpu avx512f\n"
AVX2 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
# avx512fp16 alone must not read as avx512f (a token, not a prefix)
PREFIX_ONLY = "flags\t\t: fpu avx2 avx512fp16\n"


def _cpuinfo(tmp_path, text):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return str(path)


def test_flag_added_on_avx512_keeping_the_users_other_flags(tmp_path):
    env = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert prefer_wide_vectors(env, _cpuinfo(tmp_path, AVX512)) is True
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_cpu_prefer_vector_width=512"
    env = {}
    assert prefer_wide_vectors(env, _cpuinfo(tmp_path, AVX512)) is True
    assert env == {"XLA_FLAGS": "--xla_cpu_prefer_vector_width=512"}


def test_nothing_added_without_avx512(tmp_path):
    for text in (AVX2, PREFIX_ONLY):
        env = {}
        assert prefer_wide_vectors(env, _cpuinfo(tmp_path, text)) is False
        assert env == {}


def test_the_users_vector_width_wins(tmp_path):
    env = {"XLA_FLAGS": "--xla_cpu_prefer_vector_width=256"}
    assert prefer_wide_vectors(env, _cpuinfo(tmp_path, AVX512)) is False
    assert env == {"XLA_FLAGS": "--xla_cpu_prefer_vector_width=256"}


def test_no_cpuinfo_leaves_xla_alone(tmp_path):
    env = {}
    assert prefer_wide_vectors(env, str(tmp_path / "absent")) is False
    assert env == {}
