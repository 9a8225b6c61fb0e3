"""The int8 recipes and what te predict says about them: which CPUs compute an int8 model exactly as
te export checked it, from the CPU flags (no timing, no CPU assumed)."""

from __future__ import annotations

from transfer_engine.core import cpu
from transfer_engine.onnx.recipes import DEFAULT_INT8_TARGET, RECIPES, recipe_warning

AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
ZEN4 = AVX2 | {"avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}
ALDER_LAKE = AVX2 | {"avx_vnni"}
SKYLAKE_X = AVX2 | {"avx512f", "avx512bw"}  # AVX-512 without VNNI: vpmaddubsw, like AVX2


def test_int8_families_come_from_the_vnni_flags():
    assert cpu.int8_family(ZEN4, "x86_64") == cpu.int8_family(ALDER_LAKE, "x86_64") == cpu.X86_VNNI
    assert cpu.int8_family(AVX2, "x86_64") == cpu.int8_family(SKYLAKE_X, "x86_64") == cpu.X86_NO_VNNI
    assert cpu.int8_family(frozenset(), "aarch64") == cpu.ARM64
    assert cpu.has_native_bf16(ZEN4) and not cpu.has_native_bf16(AVX2)
    here = cpu.describe()
    assert here["int8_family"] in cpu.INT8_FAMILIES and set(here["flags"]) <= set(cpu.REPORTED_FLAGS)


def test_the_default_recipe_is_the_one_exact_on_both_x86_families():
    portable = RECIPES[DEFAULT_INT8_TARGET]
    assert portable.reduce_range and set(portable.exact_on) == {cpu.X86_VNNI, cpu.X86_NO_VNNI}
    # 7-bit weights in its GEMMs (a u8 x s8 pair sum fits vpmaddubsw's int16): the exported weight codes are
    # checked in tests/export/test_int8_budget.py (test_the_portable_recipe_keeps_8_bit_weights_only_...)
    assert RECIPES["vnni"].exact_on == (cpu.X86_VNNI,) and not RECIPES["vnni"].reduce_range


def _meta(recipe: str, family: str) -> dict:
    return {"recipe": RECIPES[recipe].to_dict(), "checked_on": {"int8_family": family}}


def test_predict_warns_on_a_cpu_family_the_model_was_not_checked_on():
    assert recipe_warning(_meta("portable", cpu.X86_VNNI), here=cpu.X86_VNNI) is None
    same_results = recipe_warning(_meta("portable", cpu.X86_VNNI), here=cpu.X86_NO_VNNI)
    assert "checked on a x86-vnni CPU" in same_results and "same integer products" in same_results
    saturates = recipe_warning(_meta("vnni", cpu.X86_VNNI), here=cpu.X86_NO_VNNI)
    assert "saturate" in saturates and "--int8-target portable" in saturates
    assert "older te" in recipe_warning(None, here=cpu.X86_NO_VNNI)
