//! The crypto provider (dealer): correlated randomness for the compute parties.
//!
//! **Seed compression.** At start-up the dealer sends each compute party one 256-bit ChaCha
//! seed. Every piece of material is identified by a stream number that both parties advance in
//! lock-step (they run the same program); a party expands the *random* parts of its share of
//! that material from `ChaCha20(seed, stream)`. The *derived* parts (products, shifted masks,
//! mask bits) are also drawn from the stream by alice, and the dealer sends bob only his
//! correction `value - alice's share` (or `value ^ alice's share` for boolean material). So
//! alice receives nothing per request and bob receives only derived-part corrections.
//!
//! The dealer learns no data: it only ever receives bob's requests (material kinds and shapes).

mod material;
mod service;
pub mod tables;

pub(crate) use material::fill_words;
pub use material::{
    draw_random_parts, expand_party_share, expand_with, Correction, MaterialRng, MaterialSpec,
    PartShapes,
};
pub use service::{fold_identity, material_identity, DealerPolicy, MaskRecord};
pub(crate) use service::{material_stream, Dealer, FixedMasks, StreamSpace};
