//! Secure Serving engine: two-party secure inference over Z_2^64 with a dealer.
//!
//! - [`fixed`]: fixed-point encoding of reals into the ring.
//! - [`share`]: a party's additive share of a tensor (`!Send`: it never leaves its party's thread).
//! - [`transport`]: how parties talk (in-process channels, TCP, mutually authenticated TLS),
//!   with byte and round counting and a bounded frame format.
//! - [`deploy`]: the deployment file and its keys (CA and per-role certificates).
//! - [`dealer`]: the crypto provider: correlated randomness with seed compression.
//! - [`party`]: one compute party's isolated state and its communication helpers.
//! - [`session`]: spawns alice, bob and the dealer on their own threads; data owners share and
//!   receive reveals through it.
//! - [`protocols`]: share/reveal, add, mul, matmul (incl. fixed operands), truncation, comparison.

pub mod alloc;
pub mod dealer;
pub mod deploy;
pub mod error;
pub mod fixed;
pub mod fuzzing;
pub mod io;
pub mod nn;
pub mod party;
pub mod protocols;
pub mod session;
pub mod share;
pub mod transport;

pub use error::{EngineError, Result};
pub use fixed::FixedPoint;
pub use kernels::{Backend, BackendKind};
pub use party::Party;
pub use session::{Session, SessionConfig, SharedTensor};
pub use share::Share;
pub use transport::{PartyId, TrafficStats, TransportKind};
