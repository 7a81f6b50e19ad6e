//! Secure Serving engine: two-party secure inference over Z_2^64 with a dealer.
//!
//! - [`roles`]: who takes part (party ids, certificate roles).
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
//! - [`pool`]: preprocessed material produced ahead, in the background, per model and batch shape.
//! - [`wire`]: everything that crosses a link: frames, envelopes, tensors, dealer and control
//!   messages.
//! - [`memory`]: per-role accounting of large buffers (alice, bob, dealer, owner).
//!
//! # Example
//!
//! Share a small model, classify two inputs with their labels (only the correct-count reaches
//! the model owner, only the predictions the client), and read what each party sent:
//!
//! ```
//! use engine::nn::plain::{Layer, Sequential};
//! use engine::nn::{ClassifyOptions, SecureClassifier};
//! use engine::{PartyId, Session, SessionConfig};
//!
//! # fn main() -> engine::Result<()> {
//! // Linear(2, 2): class 0 scores x0 - x1, class 1 scores x1 - x0.
//! let model = Sequential::new(vec![Layer::linear(
//!     2,
//!     2,
//!     vec![1.0, -1.0, -1.0, 1.0], // PyTorch layout [out, in]
//!     vec![0.0, 0.0],
//! )?])?;
//! let mut session = Session::new(SessionConfig::default())?; // alice, bob, dealer: threads
//! let shared = session.share_model(PartyId::ModelOwner, &model)?;
//! let mut clf = SecureClassifier::new(&mut session, shared);
//! let report = clf.classify(
//!     &[2.0, 0.5, /* second input */ -1.0, 3.0],
//!     Some(&[0, 1]),
//!     &ClassifyOptions { batch: 2, reveal_predictions: true },
//! )?;
//! assert_eq!(report.predictions.as_deref(), Some(&[0i64, 1][..]));
//! assert_eq!(report.correct, Some(2));
//! for (i, t) in report.traffic.iter().enumerate() {
//!     assert!(t.bytes_sent > 0 && t.rounds > 0);
//!     println!("{}: {} bytes in {} rounds", PartyId::compute(i), t.bytes_sent, t.rounds);
//! }
//! drop(clf); // closes the classifier's material pools, hands the session back
//! // Everything each party has sent since the session started, by protocol step:
//! let [alice, _bob] = session.traffic()?;
//! assert!(alice.step("matmul").bytes_sent > 0);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod alloc;
pub mod dealer;
pub mod deploy;
pub mod error;
pub mod fixed;
pub mod fuzzing;
pub mod io;
pub mod memory;
pub mod nn;
mod owner;
pub mod party;
pub mod pool;
pub mod protocols;
pub mod roles;
pub mod service;
pub mod session;
pub mod share;
pub mod transport;
pub mod wire;

pub use error::{EngineError, Result};
pub use fixed::FixedPoint;
pub use kernels::{Backend, BackendKind};
pub use party::Party;
pub use session::{Session, SessionConfig, SharedTensor};
pub use share::Share;
pub use transport::{PartyId, TrafficStats, TransportKind};
