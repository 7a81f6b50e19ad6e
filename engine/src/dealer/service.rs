//! The dealer's thread: answers bob's material requests with correction words.

use std::collections::HashMap;

use kernels::cpu::gemm::{gemm, gemm_packed, PackedB};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use rayon::prelude::*;

use super::material::{
    draw_random_parts, expand_party_share, Correction, MaterialRng, MaterialSpec,
};
use crate::error::{EngineError, Result};
use crate::transport::{PartyId, Transport};

/// Request opcode: a batch of material specs.
pub(crate) const OP_BATCH: u64 = 1;
/// Request opcode: stop serving.
pub(crate) const OP_SHUTDOWN: u64 = 2;
/// Response status word: request served, corrections follow.
pub(crate) const STATUS_OK: u64 = 0;
/// Response status word: request refused, a UTF-8 reason follows (packed 8 bytes a word).
pub(crate) const STATUS_ERROR: u64 = 1;

/// Pack text into words (for error replies).
pub(crate) fn text_to_words(text: &str) -> Vec<u64> {
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
pub(crate) fn words_to_text(words: &[u64]) -> String {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    String::from_utf8_lossy(&bytes)
        .trim_end_matches('\0')
        .to_string()
}

/// Where the dealer's seeds come from.
#[derive(Clone, Copy, Debug)]
pub enum DealerRng {
    /// Fresh seeds from the operating system (production).
    Os,
    /// Seeds derived from a fixed test seed (tests only, when asked).
    TestSeed(u64),
}

/// A party's ChaCha stream for material number `stream`.
/// (The same stream the parties' backends expand with [`kernels::Backend::chacha12`].)
pub(crate) fn material_stream(seed: [u8; 32], stream: u64) -> MaterialRng {
    kernels::cpu::prg::chacha12_at(&seed, stream, 0)
}

/// Seeds for alice and bob, sent once.
fn party_seeds(source: DealerRng) -> [[u8; 32]; 2] {
    let mut base = match source {
        DealerRng::Os => ChaCha20Rng::from_entropy(),
        DealerRng::TestSeed(s) => ChaCha20Rng::seed_from_u64(s ^ 0xD3A1_E5ED),
    };
    let mut seeds = [[0u8; 32]; 2];
    for s in &mut seeds {
        base.fill_bytes(s);
    }
    seeds
}

/// Pack a 32-byte seed into 4 words for sending.
pub(crate) fn seed_to_words(seed: &[u8; 32]) -> Vec<u64> {
    seed.chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunk")))
        .collect()
}

/// Unpack a seed message.
pub(crate) fn words_to_seed(words: &[u64]) -> Result<[u8; 32]> {
    if words.len() != 4 {
        return Err(EngineError::Protocol(format!(
            "dealer seed message has {} words, expected 4",
            words.len()
        )));
    }
    let mut seed = [0u8; 32];
    for (i, w) in words.iter().enumerate() {
        seed[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    Ok(seed)
}

/// The dealer's state: the two seeds and the fixed masks it keeps.
struct Dealer {
    seeds: [[u8; 32]; 2],
    fixed: HashMap<u64, PackedB>,
}

fn add(x: &[u64], y: &[u64]) -> Vec<u64> {
    x.par_iter()
        .zip(y)
        .map(|(a, b)| a.wrapping_add(*b))
        .collect()
}

impl Dealer {
    /// Bob's correction words for one spec at stream `stream`.
    fn corrections(&mut self, spec: &MaterialSpec, stream: u64) -> Result<Vec<u64>> {
        let mut r0 = material_stream(self.seeds[0], stream);
        let mut r1 = material_stream(self.seeds[1], stream);
        let mut p0 = expand_party_share(spec, 0, &mut r0, None)?;
        let p1 = draw_random_parts(spec, &mut r1);
        let nr = spec.parts().random.len();
        let mut values: Vec<Vec<u64>> = match *spec {
            MaterialSpec::MulTriple { .. } => {
                let (a, b) = (add(&p0[0], &p1[0]), add(&p0[1], &p1[1]));
                vec![a
                    .par_iter()
                    .zip(&b)
                    .map(|(x, y)| x.wrapping_mul(*y))
                    .collect()]
            }
            MaterialSpec::MatmulTriple { m, k, n } => {
                let (a, b) = (add(&p0[0], &p1[0]), add(&p0[1], &p1[1]));
                let mut c = vec![0u64; m * n];
                gemm(m, k, n, &a, &b, &mut c, false);
                vec![c]
            }
            MaterialSpec::FixedMask { fixed_id, k, n } => {
                // b = b0 + b1, summed in place: a weight-sized buffer fewer.
                let b = &mut p0[0];
                b.par_iter_mut()
                    .zip(&p1[0])
                    .for_each(|(x, y)| *x = x.wrapping_add(*y));
                self.fixed.insert(fixed_id, PackedB::pack(k, n, b));
                vec![]
            }
            MaterialSpec::FixedTriple { fixed_id, m, k, n } => {
                let b = self.fixed.get(&fixed_id).ok_or_else(|| {
                    EngineError::Protocol(format!("unknown fixed operand {fixed_id}"))
                })?;
                if (b.k(), b.n()) != (k, n) {
                    return Err(EngineError::Protocol(format!(
                        "fixed operand {fixed_id} is {}x{}, request says {k}x{n}",
                        b.k(),
                        b.n()
                    )));
                }
                let a = add(&p0[0], &p1[0]);
                let mut c = vec![0u64; m * n];
                gemm_packed(m, &a, b, &mut c, false);
                vec![c]
            }
            MaterialSpec::Trunc { bits, .. } => {
                let r = add(&p0[0], &p1[0]);
                vec![
                    r.par_iter().map(|x| x >> bits).collect(),
                    r.par_iter().map(|x| x >> 63).collect(),
                ]
            }
            MaterialSpec::AndTriple { .. } => {
                let (a0, a1, b0, b1) = (&p0[0], &p1[0], &p0[1], &p1[1]);
                vec![(0..a0.len())
                    .into_par_iter()
                    .map(|i| (a0[i] ^ a1[i]) & (b0[i] ^ b1[i]))
                    .collect()]
            }
            MaterialSpec::BitSelect { n, payloads } => {
                let packed: Vec<u64> = p0[0].iter().zip(&p1[0]).map(|(x, y)| x ^ y).collect();
                let bit: Vec<u64> = (0..n).map(|e| (packed[e / 64] >> (e % 64)) & 1).collect();
                let a = add(&p0[1], &p1[1]);
                let c: Vec<u64> = (0..payloads * n)
                    .into_par_iter()
                    .map(|i| a[i].wrapping_mul(bit[i % n]))
                    .collect();
                vec![bit, c]
            }
        };
        let mut out = Vec::with_capacity(spec.parts().derived.iter().sum());
        for (i, v) in values.iter_mut().enumerate() {
            let alice = &p0[nr + i];
            match spec.correction() {
                Correction::Arithmetic => v
                    .par_iter_mut()
                    .zip(alice)
                    .for_each(|(x, y)| *x = x.wrapping_sub(*y)),
                Correction::Boolean => v.par_iter_mut().zip(alice).for_each(|(x, y)| *x ^= y),
            }
            out.extend_from_slice(v);
        }
        Ok(out)
    }

    fn serve_batch(&mut self, words: &[u64]) -> Result<Vec<u64>> {
        if words.len() < 2 {
            return Err(EngineError::Protocol("short material request".into()));
        }
        let first_stream = words[0];
        let count = words[1] as usize;
        let body = &words[2..];
        if body.len() != count * MaterialSpec::ENCODED_WORDS {
            return Err(EngineError::Protocol("malformed material request".into()));
        }
        let mut out = vec![STATUS_OK];
        for (i, chunk) in body.chunks(MaterialSpec::ENCODED_WORDS).enumerate() {
            let spec = MaterialSpec::decode(chunk)?;
            out.extend(self.corrections(&spec, first_stream + i as u64)?);
        }
        Ok(out)
    }
}

/// Run the dealer on the current thread until bob asks it to stop or disconnects.
///
/// Sends each compute party its seed first. Requests only ever come from bob; alice expands her
/// material locally and never talks to the dealer after receiving her seed.
pub fn run_dealer(mut net: Box<dyn Transport>, source: DealerRng) -> Result<()> {
    let seeds = party_seeds(source);
    net.meter().set_step("dealer");
    net.send(PartyId::Alice, seed_to_words(&seeds[0]))?;
    net.send(PartyId::Bob, seed_to_words(&seeds[1]))?;
    let mut dealer = Dealer {
        seeds,
        fixed: HashMap::new(),
    };
    loop {
        let msg = match net.recv(PartyId::Bob) {
            Ok(m) => m,
            Err(EngineError::Timeout { .. }) => continue,
            Err(EngineError::Disconnected { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        match msg.first() {
            Some(&OP_BATCH) => {
                let reply = dealer.serve_batch(&msg[1..]).unwrap_or_else(|e| {
                    let mut r = vec![STATUS_ERROR];
                    r.extend(text_to_words(&e.to_string()));
                    r
                });
                net.send(PartyId::Bob, reply)?;
            }
            Some(&OP_SHUTDOWN) => return Ok(()),
            _ => {
                let mut r = vec![STATUS_ERROR];
                r.extend(text_to_words("unknown dealer opcode"));
                net.send(PartyId::Bob, r)?
            }
        }
    }
}
