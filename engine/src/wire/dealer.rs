//! The dealer's messages: a party's seed grant for a request, bob's material requests and the
//! dealer's answers (status word first; corrections or a reason follow), and the opcodes and
//! step of every message on a dealer link.

use crate::dealer::MaterialSpec;
use crate::error::{EngineError, Result};

/// The step of every message on a dealer link.
pub const DEALER_STEP: &str = "dealer";
/// Request opcode: bob's last message of a request (a control `DealerEnd` follows).
pub const OP_END: u64 = 4;
/// Request opcode: a batch of material specs.
pub const OP_BATCH: u64 = 1;
/// Response status word: request served, corrections follow.
pub const STATUS_OK: u64 = 0;
/// Response status word: request refused, a UTF-8 reason follows (packed 8 bytes a word).
pub const STATUS_ERROR: u64 = 1;

/// Pack text into words (for error replies).
pub fn text_to_words(text: &str) -> Vec<u64> {
    text.as_bytes()
        .chunks(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect()
}

/// Unpack text packed by [`text_to_words`].
pub fn words_to_text(words: &[u64]) -> String {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    String::from_utf8_lossy(&bytes)
        .trim_end_matches('\0')
        .to_string()
}

/// What the dealer gives a party for one request: the party's own seed, and the request's
/// material tag, random and the same for both parties. Every piece of material a party expands
/// carries an identity derived from the tag (see [`material_identity`]), which the parties
/// compare on every message they exchange: material from two different grants can never be
/// combined silently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeedGrant {
    /// The party's seed.
    pub seed: [u8; 32],
    /// The request's material tag (public, shared by both parties).
    pub tag: u64,
}

impl SeedGrant {
    /// Words of a grant on the wire.
    pub const WORDS: usize = 5;

    /// The grant as words: the seed packed into 4 words, then the tag.
    pub fn to_words(&self) -> Vec<u64> {
        let mut w: Vec<u64> = self
            .seed
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunk")))
            .collect();
        w.push(self.tag);
        w
    }

    /// Unpack a grant sent with [`SeedGrant::to_words`].
    pub fn from_words(words: &[u64]) -> Result<SeedGrant> {
        if words.len() != Self::WORDS {
            return Err(EngineError::Protocol(format!(
                "dealer seed message has {} words, expected {}",
                words.len(),
                Self::WORDS
            )));
        }
        let mut seed = [0u8; 32];
        for (i, w) in words[..4].iter().enumerate() {
            seed[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        Ok(SeedGrant {
            seed,
            tag: words[4],
        })
    }
}

/// A material request: `[OP_BATCH, first, count, specs...]` (bob's expected first stream and
/// the specs, in consumption order).
pub fn encode_material_request(first: u64, specs: &[MaterialSpec]) -> Vec<u64> {
    let mut req = Vec::with_capacity(3 + specs.len() * MaterialSpec::ENCODED_WORDS);
    req.extend([OP_BATCH, first, specs.len() as u64]);
    for s in specs {
        s.encode(&mut req);
    }
    req
}

/// Decode the body of a material request (after the opcode): bob's expected first stream and
/// the specs. Checks the framing only; the dealer validates the parameters before serving.
pub fn decode_material_request(words: &[u64]) -> Result<(u64, Vec<MaterialSpec>)> {
    let [first, count, body @ ..] = words else {
        return Err(EngineError::Protocol("short material request".into()));
    };
    let expected = (*count)
        .checked_mul(MaterialSpec::ENCODED_WORDS as u64)
        .filter(|&n| n == body.len() as u64);
    if expected.is_none() {
        return Err(EngineError::Protocol(format!(
            "malformed material request: {count} specs announced, {} words follow",
            body.len()
        )));
    }
    let specs = body
        .chunks(MaterialSpec::ENCODED_WORDS)
        .map(MaterialSpec::decode)
        .collect::<Result<Vec<_>>>()?;
    Ok((*first, specs))
}
