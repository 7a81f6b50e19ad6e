//! Protocols on shares, as methods of [`crate::Party`].
//!
//! - [`linear`]: local operations (add, sub, neg, public constants, sums).
//! - [`io`]: receiving shares from an owner, revealing to a named recipient.
//! - [`truncate`]: dealer-assisted exact fixed-point truncation (1 round).
//! - [`mul`]: Beaver elementwise multiplication.
//! - [`matmul`]: Beaver matrix products, including fixed (masked-once) operands.
//! - [`conv`]: convolutions by fixed operands that open the activation, not its im2col.
//! - [`compare`]: sign/less-than via a boolean prefix adder (any ring value) or dealer lookup
//!   tables (values below `2^31`, with a fused range check), ReLU, Clip, LeakyReLU, eq, max,
//!   argmax.
//! - [`range_check`]: the in-protocol range checks of a batch, finished with one bit per site.

pub mod compare;
pub mod conv;
pub mod io;
pub mod linear;
pub mod matmul;
pub mod mul;
pub mod range_check;
pub mod truncate;

pub use compare::ARGMAX_TIE_RULE;
pub use matmul::FixedOperand;
