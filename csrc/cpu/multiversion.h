// TE_MULTIVERSION: compile a hot loop for AVX-512 (x86-64-v4), AVX2 (x86-64-v3) and the baseline, and
// let the loader pick the best one for the CPU it runs on (GCC target_clones, an ifunc). The build
// flags stay portable (no -march), so the same wheel runs on any x86-64, yet the plain loops below it
// are vectorized 16 floats wide where the CPU allows. Elsewhere it expands to nothing.
//
// None of the clones changes results: the loops use no reassociation (-ffast-math is never on), so every
// element sees the same IEEE operations whatever the vector width.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define TE_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TE_MULTIVERSION
#endif
