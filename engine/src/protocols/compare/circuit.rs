//! The boolean part of the comparison, on host words with rayon: a carry tree whose operands
//! shrink by half at every level.
//!
//! At width `w` bits per element, the XOR-shared generate/propagate bits of `L = 64 / w`
//! elements share one word (element `e` in lane `e mod L` of word `e / L`; the last word may be
//! partly used). One level combines bit pairs `(2i+1, 2i)` into one
//! group bit — `G' = G_odd ^ (P_odd & G_even)`, `P' = P_odd & P_even` — and compacts the
//! result to width `w/2`, so level `j` ANDs only `64 >> j` bits per element. Odd/even bit
//! extraction is a fixed bit selection, hence XOR-linear: each party applies it to its own share.

use rayon::prelude::*;

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// Gather the odd (`shift = 1`) or even (`shift = 0`) bits of a word into its low 32 bits.
#[inline(always)]
fn gather_bits(x: u64, shift: u32) -> u64 {
    let mut x = (x >> shift) & 0x5555_5555_5555_5555;
    x = (x | (x >> 1)) & 0x3333_3333_3333_3333;
    x = (x | (x >> 2)) & 0x0F0F_0F0F_0F0F_0F0F;
    x = (x | (x >> 4)) & 0x00FF_00FF_00FF_00FF;
    x = (x | (x >> 8)) & 0x0000_FFFF_0000_FFFF;
    (x | (x >> 16)) & 0x0000_0000_FFFF_FFFF
}

/// Odd or even bits of every word, compacted: `k` words at width `w` become `ceil(k / 2)`
/// words at width `w / 2` (lane order preserved; a missing last word counts as zero).
pub fn compact(words: &[u64], odd: bool) -> Vec<u64> {
    let shift = odd as u32;
    let mut out = vec![0u64; words.len().div_ceil(2)];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, dst)| {
        let base = ci * CHUNK * 2;
        for (i, d) in dst.iter_mut().enumerate() {
            let j = base + 2 * i;
            let hi = words.get(j + 1).map_or(0, |&w| gather_bits(w, shift));
            *d = gather_bits(words[j], shift) | (hi << 32);
        }
    });
    out
}

/// Masked openings of AND gates `x & y` with triple `(a, b, c)`: writes `x ^ a` then `y ^ b`.
pub fn and_mask(x: &[u64], y: &[u64], a: &[u64], b: &[u64], out: &mut Vec<u64>) {
    let n = x.len();
    let start = out.len();
    out.resize(start + 2 * n, 0);
    let (e, f) = out[start..].split_at_mut(n);
    e.par_chunks_mut(CHUNK)
        .zip(f.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(ci, (e, f))| {
            let o = ci * CHUNK;
            for i in 0..e.len() {
                e[i] = x[o + i] ^ a[o + i];
                f[i] = y[o + i] ^ b[o + i];
            }
        });
}

/// This party's share of `x & y` from its inputs, the peer's masked values, and the triple
/// (the opened `e = x ^ a ^ e_peer`, `f = y ^ b ^ f_peer` are recomputed, not stored).
#[allow(clippy::too_many_arguments)]
pub fn and_combine(
    x: &[u64],
    y: &[u64],
    their_e: &[u64],
    their_f: &[u64],
    a: &[u64],
    b: &[u64],
    c: &[u64],
    first: bool,
) -> Vec<u64> {
    let mut z = vec![0u64; c.len()];
    z.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, z)| {
        let o = ci * CHUNK;
        for (i, zi) in z.iter_mut().enumerate() {
            let j = o + i;
            let e = x[j] ^ a[j] ^ their_e[j];
            let f = y[j] ^ b[j] ^ their_f[j];
            let mut v = c[j] ^ (e & b[j]) ^ (a[j] & f);
            if first {
                v ^= e & f;
            }
            *zi = v;
        }
    });
    z
}

/// Word counts of the AND batches, level by level, for `n` elements: level 0 ANDs one word
/// per element, level `j` ANDs `ceil(n / 2^j)` words for G and (below the top) as many for P.
pub fn and_batch_words(n: usize) -> Vec<usize> {
    let mut v = vec![n];
    for j in 1..=6 {
        let words = n.div_ceil(1 << j);
        v.push(if j < 6 { 2 * words } else { words });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_selects_bits_in_order() {
        let x = 0b1011_0110u64 | (1 << 63);
        // odd bits of 10110110: positions 1,3,5,7 -> 1,0,1,1 ; bit 63 -> position 31.
        assert_eq!(gather_bits(x, 1), 0b1101 | (1 << 31));
        assert_eq!(gather_bits(x, 0), 0b0110);
        assert_eq!(compact(&[u64::MAX, 0], true), vec![0xFFFF_FFFF]);
        assert_eq!(compact(&[0, u64::MAX], false), vec![0xFFFF_FFFF << 32]);
    }

    #[test]
    fn batch_sizes_shrink_by_half() {
        assert_eq!(and_batch_words(64), vec![64, 64, 32, 16, 8, 4, 1]);
        assert_eq!(and_batch_words(1), vec![1, 2, 2, 2, 2, 2, 1]);
        assert_eq!(compact(&[u64::MAX], true), vec![0xFFFF_FFFF]);
    }
}
