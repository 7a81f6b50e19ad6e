//! Stream numbers and material identities: which ChaCha stream a piece of material is drawn
//! from, the order in which a request's streams are served (each once), and the identity both
//! parties compute for every piece so that halves made for different requests never meet.

use super::material::{MaterialRng, MaterialSpec};
use crate::error::{EngineError, Result};

/// A party's ChaCha stream for material number `stream`.
/// (The same stream the parties' backends expand with [`kernels::Backend::chacha12`].)
pub(crate) fn material_stream(seed: [u8; 32], stream: u64) -> MaterialRng {
    kernels::cpu::prg::chacha12_at(&seed, stream, 0)
}

/// The identity of one piece of material: its grant's tag, its stream and its spec (kind,
/// shapes, fixed operand), mixed into one word. Alice and bob compute it from public values
/// only; equal identities mean the two halves were made for each other.
pub fn material_identity(tag: u64, stream: u64, spec: &MaterialSpec) -> u64 {
    let mut words = vec![tag, stream];
    spec.encode(&mut words);
    words
        .iter()
        .fold(0x243F_6A88_85A3_08D3, |h, &w| mix_word(h ^ w))
}

/// Fold `next` into a running fingerprint (order matters).
pub fn fold_identity(running: u64, next: u64) -> u64 {
    mix_word(running.rotate_left(17) ^ next)
}

/// SplitMix64's finaliser: every input bit affects every output bit.
fn mix_word(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The stream numbers of one request, served in order: `0, 1, 2, ...`, each at most once.
pub(crate) struct StreamSpace {
    /// The next stream to assign.
    next: u64,
}

impl StreamSpace {
    /// A request's streams, from 0.
    pub(crate) fn new() -> StreamSpace {
        StreamSpace { next: 0 }
    }

    /// Admit a request for `count` streams from `first`: refused unless `first` is the next
    /// stream (then the streams are consumed, served or not).
    pub(crate) fn admit(&mut self, first: u64, count: u64) -> Result<()> {
        if first != self.next {
            let what = if first < self.next {
                "already served"
            } else {
                "out of order"
            };
            return Err(EngineError::Protocol(format!(
                "request for streams from {first} refused ({what}): the next stream is {}",
                self.next
            )));
        }
        self.next = first
            .checked_add(count)
            .ok_or_else(|| EngineError::Protocol("stream numbers exhausted".into()))?;
        Ok(())
    }
}
