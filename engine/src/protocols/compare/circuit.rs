//! The shape of the comparison's carry tree: how many AND words each round gates.
//!
//! At width `w` bits per element, the XOR-shared generate/propagate bits of `L = 64 / w`
//! elements share one word (element `e` in lane `e mod L` of word `e / L`; the last word may be
//! partly used). One level combines bit pairs `(2i+1, 2i)` into one group bit —
//! `G' = G_odd ^ (P_odd & G_even)`, `P' = P_odd & P_even` — and compacts the result to width
//! `w/2` ([`kernels::Backend::compact_bits`]), so level `j` ANDs only `64 >> j` bits per element.
//! Odd/even bit extraction is a fixed bit selection, hence XOR-linear: each party applies it to
//! its own share.

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
    fn batch_sizes_shrink_by_half() {
        assert_eq!(and_batch_words(64), vec![64, 64, 32, 16, 8, 4, 1]);
        assert_eq!(and_batch_words(1), vec![1, 2, 2, 2, 2, 2, 1]);
    }
}
