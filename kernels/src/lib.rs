//! Ring-tensor compute for secret-shared arithmetic over Z_2^64.
//!
//! Everything here is plain wrapping `u64` arithmetic: the kernels know nothing about shares,
//! parties or fixed point. The [`Backend`] trait is the one interface the engine computes through;
//! [`CpuBackend`] (rayon + AVX-512/AVX2 GEMM) and [`GpuBackend`] (wgpu compute shaders emulating
//! 64-bit rings with u32 pairs) implement it and must agree bit-for-bit.

#![warn(missing_docs)]

pub mod backend;
pub mod cpu;
pub mod error;
pub mod gpu;
pub mod select;
pub mod tensor;

pub use backend::{Backend, BeaverKind, BinaryOp, BitLookup, ScalarOp, TransferStats, GATHER_ZERO};
pub use cpu::CpuBackend;
pub use error::{KernelError, Result};
pub use gpu::GpuBackend;
pub use select::{backend_from_kind, BackendKind};
pub use tensor::{Storage, Tensor};
