//! The material generator's keystream on the host: ChaCha12 (rand_chacha's `ChaCha12Rng`),
//! filled in parallel by seeking (the GPU backend computes the same stream in WGSL).

use rand_chacha::ChaCha12Rng;
use rand_core::RngCore;
use rayon::prelude::*;

/// Words generated per parallel task when expanding long material parts.
const FILL_CHUNK: usize = 1 << 15;

/// Fill `buf` with the next `buf.len()` words of `rng`'s stream, in parallel chunks.
///
/// Each chunk seeks its own copy of the generator to its offset (ChaCha is seekable), so the
/// result equals a sequential fill and does not depend on the number of threads; afterwards
/// `rng` stands just past the consumed words.
pub fn fill_words(rng: &mut ChaCha12Rng, buf: &mut [u64]) {
    if buf.len() <= FILL_CHUNK {
        rng.fill_bytes(bytemuck_words(buf));
        return;
    }
    // The stream position counts 32-bit words; each u64 consumes two.
    let start = rng.get_word_pos();
    buf.par_chunks_mut(FILL_CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut r = rng.clone();
            r.set_word_pos(start + 2 * (i * FILL_CHUNK) as u128);
            r.fill_bytes(bytemuck_words(chunk));
        });
    rng.set_word_pos(start + 2 * buf.len() as u128);
}

fn bytemuck_words(buf: &mut [u64]) -> &mut [u8] {
    bytemuck::cast_slice_mut(buf)
}

/// A ChaCha12 generator keyed by `key` on stream `stream`, at 32-bit word position `word_pos`.
pub fn chacha12_at(key: &[u8; 32], stream: u64, word_pos: u128) -> ChaCha12Rng {
    use rand_core::SeedableRng;
    let mut rng = ChaCha12Rng::from_seed(*key);
    rng.set_stream(stream);
    rng.set_word_pos(word_pos);
    rng
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    #[test]
    fn parallel_fill_equals_a_sequential_stream() {
        let mut a = ChaCha12Rng::seed_from_u64(7);
        let mut b = a.clone();
        let mut big = vec![0u64; 3 * FILL_CHUNK + 5];
        fill_words(&mut a, &mut big);
        let mut seq = vec![0u64; big.len()];
        b.fill_bytes(bytemuck_words(&mut seq));
        assert_eq!(big, seq);
        assert_eq!(a.next_u64(), b.next_u64());
    }
}
