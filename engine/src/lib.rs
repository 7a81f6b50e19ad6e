//! Secure Serving engine: two-party secure inference over Z_2^64 with a dealer.
//!
//! Alice and bob (the compute parties) hold additive shares of a model owner's model and a
//! client's data; the dealer (crypto provider) hands out correlated randomness and never sees
//! data. The three run as services ([`service`]): across hosts over mutually authenticated TLS,
//! or in one process ([`service::local::LocalDeployment`]) — the same party code either way.
//!
//! Floors, from the ground up (each module names only those below it):
//! - [`roles`]: who takes part (party ids, certificate roles); [`error`]; [`fixed`]: fixed-point
//!   encoding of reals into the ring; [`share`]: a party's additive share of a tensor.
//! - [`wire`]: everything that crosses a link (frames, envelopes, tensors, dealer and control
//!   messages); [`transport`]: how parties talk (in-process, TCP, TLS), with traffic metering;
//!   [`deploy`]: the deployment file and its keys.
//! - [`dealer`]: correlated randomness with seed compression; [`party`]: one compute party's
//!   state inside a request; [`protocols`]: share/reveal, products, truncation, comparison.
//! - [`nn`]: plaintext models, their range analysis, public plans and shared counterparts;
//!   [`io`]: model and data files.
//! - [`service`]: the dealer and party services, data owners' clients, material made ahead,
//!   the in-process deployment and the embedding API for custom computations.
//!
//! # Example
//!
//! Upload a small model to an in-process deployment, classify two inputs with their labels
//! (only the correct count reaches the model owner, only the predictions the client), and read
//! what each party sent:
//!
//! ```
//! use engine::nn::plain::{Layer, Sequential};
//! use engine::nn::range::ModelBounds;
//! use engine::service::classifier::{ClassifyOptions, SecureClassifier};
//! use engine::service::local::{LocalConfig, LocalDeployment};
//! use engine::{FixedPoint, PartyId};
//!
//! # fn main() -> engine::Result<()> {
//! // Linear(2, 2): class 0 scores x0 - x1, class 1 scores x1 - x0.
//! let model = Sequential::new(vec![Layer::linear(
//!     2,
//!     2,
//!     vec![1.0, -1.0, -1.0, 1.0], // PyTorch layout [out, in]
//!     vec![0.0, 0.0],
//! )?])?;
//! let deployment = LocalDeployment::start(LocalConfig::default())?; // alice, bob, dealer
//! let mut clf =
//!     SecureClassifier::upload(&deployment, &model, &FixedPoint::default(), &ModelBounds::default())?;
//! let report = clf.classify(
//!     &[2.0, 0.5, /* second input */ -1.0, 3.0],
//!     Some(&[0, 1]),
//!     &ClassifyOptions { batch: 2 },
//! )?;
//! assert_eq!(report.predictions, vec![0, 1]);
//! assert_eq!(report.correct, Some(2));
//! for (i, t) in report.traffic.iter().enumerate() {
//!     assert!(t.bytes_sent > 0 && t.rounds > 0);
//!     println!("{}: {} bytes in {} rounds", PartyId::compute(i), t.bytes_sent, t.rounds);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Custom secure computations (share tensors, run programs on both parties, reveal to a named
//! data owner) run on the same services: see [`service::computation`].

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
pub mod protocols;
pub mod ratelog;
pub mod roles;
pub mod service;
pub mod share;
pub mod transport;
pub mod wire;

pub use error::{EngineError, Result};
pub use fixed::FixedPoint;
pub use kernels::{Backend, BackendKind};
pub use party::Party;
pub use service::computation::{Computation, SharedTensor};
pub use service::local::{LocalConfig, LocalDeployment};
pub use share::Share;
pub use transport::{PartyId, TrafficStats, TransportKind};
