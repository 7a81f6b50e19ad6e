//! The crypto provider (dealer): correlated randomness for the compute parties.
//!
//! **Seed compression.** For every request the dealer gives each compute party one 256-bit
//! ChaCha seed (and the request's material tag, [`crate::wire::dealer::SeedGrant`]). Every piece of material is identified by a stream number that both parties advance in
//! lock-step (they run the same program); a party expands the *random* parts of its share of
//! that material from `ChaCha20(seed, stream)`. The *derived* parts (products, shifted masks,
//! mask bits) are also drawn from the stream by alice, and the dealer sends bob only his
//! correction `value - alice's share` (or `value ^ alice's share` for boolean material). So
//! alice receives nothing per request and bob receives only derived-part corrections.
//!
//! The dealer learns no data: it only ever receives bob's requests (material kinds and shapes).
//!
//! - `chunks`: a batch's material cut into bounded dealer requests, identically at both parties.
//! - `material`: the kinds of material ([`MaterialSpec`]) and how each party's share is drawn.
//! - `streams`: stream numbers, the order they are served in, material identities.
//! - `provider`: the dealer's side of a request (corrections, parameter checks, fixed masks).
//!   The dealer *service* (links, joins, persistence) is [`crate::service::dealer`].

mod chunks;
mod material;
mod provider;
mod streams;
pub mod tables;

pub use chunks::{chunk_bound, split_into_chunks, total_words, MAX_CHUNK_WORDS};
pub use material::{
    draw_random_parts, expand_party_share, expand_with, Correction, MaterialRng, MaterialSpec,
    PartShapes,
};
pub(crate) use material::{fill_from_seed, fill_words};
pub(crate) use provider::{Dealer, FixedMasks};
pub use provider::{DealerPolicy, MaskRecord};
pub use streams::{fold_identity, material_identity};
pub(crate) use streams::{material_stream, StreamSpace};
