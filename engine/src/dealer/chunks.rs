//! Material in bounded chunks: how a batch's material list is cut into dealer requests.
//!
//! A batch of a large network at a large batch size needs more material than one dealer
//! request may carry (the dealer's `max_request_words`, a deployment's
//! `limits.max_material_words`) and more than a party should hold at once. Its spec list (in
//! consumption order) is therefore cut into runs of consecutive specs whose words
//! ([`MaterialSpec::checked_words`], the dealer's own count) stay under a bound well below the
//! dealer's limit ([`chunk_bound`]); each run is one dealer request, expanded and consumed before
//! the next but one is made. The cut depends on the spec list and the bound only, so both
//! parties, which hold the same list and the same deployment file, cut identically: their stream
//! numbers and material identities still agree. A single spec larger than the bound is a chunk
//! of its own; one larger than the dealer's limit is still refused by the dealer, with its
//! reason.

use super::material::MaterialSpec;

/// The largest chunk, in words per party, whatever the dealer's limit: 2^24 words (128 MiB).
pub const MAX_CHUNK_WORDS: u64 = 1 << 24;

/// Words per chunk for a dealer whose per-request limit is `max_request_words`: a quarter of the
/// limit, at most [`MAX_CHUNK_WORDS`], at least 1.
pub fn chunk_bound(max_request_words: u64) -> u64 {
    (max_request_words / 4).clamp(1, MAX_CHUNK_WORDS)
}

/// Words of all specs together (one party's share, as the dealer counts them), or `None` if a
/// size overflows.
pub fn total_words(specs: &[MaterialSpec]) -> Option<u64> {
    specs.iter().try_fold(0u64, |acc, s| {
        s.checked_words().and_then(|w| acc.checked_add(w))
    })
}

/// Cut `specs` (in consumption order) into runs of consecutive specs of at most `bound` words
/// each; a spec of more than `bound` words (or whose size overflows) is a run of its own. The
/// runs, concatenated, are `specs`; none is empty.
pub fn split_into_chunks(specs: Vec<MaterialSpec>, bound: u64) -> Vec<Vec<MaterialSpec>> {
    let mut out = Vec::new();
    let mut current: Vec<MaterialSpec> = Vec::new();
    let mut words = 0u64;
    for spec in specs {
        let w = spec.checked_words().unwrap_or(u64::MAX);
        if !current.is_empty() && words.saturating_add(w) > bound {
            out.push(std::mem::take(&mut current));
            words = 0;
        }
        words = words.saturating_add(w);
        current.push(spec);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_keep_the_order_stay_under_the_bound_and_isolate_large_specs() {
        let specs = vec![
            MaterialSpec::MulTriple { n: 10 },    // 30 words
            MaterialSpec::MulTriple { n: 10 },    // 30
            MaterialSpec::MulTriple { n: 10 },    // 30
            MaterialSpec::MulTriple { n: 100 },   // 300: alone
            MaterialSpec::AndTriple { n: 5 },     // 15
            MaterialSpec::MulTriple { n: 20 },    // 60
            MaterialSpec::MulTriple { n: 1_000 }, // 3000: alone
        ];
        let chunks = split_into_chunks(specs.clone(), 64);
        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![2, 1, 1, 1, 1, 1]);
        assert_eq!(chunks.concat(), specs);
        for c in &chunks {
            let w = total_words(c).unwrap();
            assert!(w <= 64 || c.len() == 1, "{c:?}: {w} words");
        }
        let chunks = split_into_chunks(specs.clone(), 100);
        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![3, 1, 2, 1]);
        assert_eq!(split_into_chunks(specs.clone(), u64::MAX), vec![specs]);
        assert!(split_into_chunks(Vec::new(), 10).is_empty());
    }

    #[test]
    fn the_bound_is_a_quarter_of_the_limit_capped() {
        assert_eq!(chunk_bound(1000), 250);
        assert_eq!(chunk_bound(2), 1);
        assert_eq!(chunk_bound(1 << 28), MAX_CHUNK_WORDS);
    }
}
