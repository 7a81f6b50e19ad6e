//! Layers and models: plaintext definitions, their shared (secret) counterparts, and the
//! tutorial's encrypted classification flow.
//!
//! - [`plain`]: a plaintext `Sequential` of `Linear`, `Conv2d`, pools, affine maps (batch norm),
//!   `ReLU`, `LeakyReLU`, `Clip`, `HardSwish`, `Dropout`, `Flatten`, `Add`, `Concat` (the model owner's
//!   model), VGG16 builders, and plaintext evaluation.
//! - [`graph`]: how the layers are connected (a chain or a DAG: residual connections,
//!   concatenations), and evaluation in topological order keeping only live values.
//! - [`fold`]: affine maps folded into adjacent Linear and Conv2d layers.
//! - [`geometry`]: sliding windows (NCHW) and the gather indices lowering them to products.
//! - [`shared`]: the same model after `fix_precision().share(alice, bob, crypto_provider)`:
//!   handles to shares held by the parties, with a per-party secure forward pass.
//! - [`plan`]: a model's public plan (layer kinds, shapes, wiring, ring limits; nothing derived
//!   from the weights), how the owner sends its shares and how a party builds it, in every
//!   deployment.
//! - [`range`]: range analysis before sharing and run-time range checks (no silent overflow).
//! - [`rewrite`]: exact rewrites of the shared model (a ReLU read only by a max pool runs after
//!   it, `relu(maxpool(x))`), with their soundness under the range checks.
//! - [`classify`]: a party's batch of the PySyft tutorial flow (encrypted argmax, eq with shared
//!   labels, sum; the correct count stays shared for the model owner, predictions go to the
//!   client only).

pub mod classify;
pub mod fold;
pub mod geometry;
pub mod graph;
pub mod plain;
pub mod plan;
pub mod range;
pub mod rewrite;
pub mod shared;
pub mod source;

pub use classify::check_labels;
pub use graph::Wiring;
pub use plain::GraphBuilder;
pub use plain::{Layer, Sequential};
pub use plan::{LayerPlan, ModelPlan};
pub use range::{ModelBounds, RangeReport};
pub use shared::SharedModel;
pub use source::{LayerShape, ModelSource};
