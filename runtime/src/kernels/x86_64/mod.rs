//! x86_64 kernel tables: AVX2 ([`avx2`]) and AVX-512 VNNI ([`avx512vnni`]),
//! each complete (GEMM, depthwise; `avx512vnni` also the add).

pub(super) mod avx2;
pub(super) mod avx512vnni;
