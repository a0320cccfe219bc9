"""Names of the int8 and bf16 dot-product tensor intrinsics: the schedules refer to them by
name, and :mod:`relaycomp.schedules.cpu.int8_intrin` and ``bf16_intrin`` register them (only
when first needed: parsing their TVMScript costs seconds)."""

DOT_8X2_AVX2 = "relaycomp_dot_8x2_u8i8i32_avx2"
DOT_8X4_AVX2 = "relaycomp_dot_8x4_u8i8i32_avx2_pairs"
DOT_8X2_AVX2_WIDE = "relaycomp_dot_8x2_u8i16i32_avx2"  # weights widened to int16 beforehand
DOT_16X4_VNNI = "relaycomp_dot_16x4_u8i8i32_vnni"
DOT_8X4_VNNI = "relaycomp_dot_8x4_u8i8i32_vnni_ymm"
DOT_4X4_SDOT = "relaycomp_dot_4x4_i8i8i32_sdot"
DOT_16X2_BF16 = "relaycomp_dot_16x2_bf16bf16f32_avx512bf16"
DOT_8X2_BF16 = "relaycomp_dot_8x2_bf16bf16f32_avx512bf16_ymm"
DOT_4X2_BFDOT = "relaycomp_dot_4x2_bf16bf16f32_bfdot"
