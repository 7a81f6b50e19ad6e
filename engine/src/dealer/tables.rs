//! The narrow comparison's material: which lookup tables each element holds, where, and how
//! the dealer fills them — one definition for the dealer and the parties.
//!
//! The parties open `C = v + R` for the dealer's uniform mask `R` (see
//! [`crate::protocols::compare`]'s `narrow` module). Every table is a function of one chunk of
//! `R`'s bits, indexed by the same chunk of the public `C`: a `Below` table holds `[j < r]` and
//! an `Equal` table `[j == r]` for every `j < 2^width`, where `r` is the chunk's value. An
//! element's tables are one bit string (a row of whole words); each table starts at a bit
//! offset aligned to its size (to a word for tables of 64 bits and more). The tables are
//! XOR-shared like boolean material: alice's row is random, bob's is the dealer's correction.

use rayon::prelude::*;

/// Bits the narrow comparison works on: it decides `[v < 0]` for every `|v| < 2^31` ring
/// units from the low 32 bits of `v`.
pub const NARROW_BITS: u32 = 32;

/// Lowest bit of the fused range check's window: values `|v| < 2^(CHECK_LOW_BIT - 1)` always
/// pass, values with `|v| >= 1.5·2^CHECK_LOW_BIT` (up to the window's top) never do.
pub const CHECK_LOW_BIT: u32 = NARROW_BITS - 2;

/// Widest chunk a comparison table indexes (tables of 2^8 bits; wider windows use up to four
/// chunks of at most 9 bits).
const CHUNK_BITS: u32 = 8;

/// Most chunks a window is cut into: a two-level AND tree merges them.
pub const MAX_CHUNKS: usize = 4;

/// Top (exclusive) bit of the range check's window at `frac_bits` fractional bits: every value
/// a checked comparison sees is proven below `2^(top - 2)` ring units by the owner's range
/// analysis (a truncated product is below `2^(62 - f)` plus its bias, sums of two such values
/// below `2^(63 - f)`), so the check needs only the bits below `top = 66 - f` (at most 64).
pub fn check_top_bit(frac_bits: u32) -> u32 {
    66u32.saturating_sub(frac_bits).clamp(CHECK_LOW_BIT + 1, 64)
}

/// What a table holds for a chunk value `r`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    /// `[j < r]`.
    Below,
    /// `[j == r]`.
    Equal,
}

/// One table of an element's row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    /// What it holds.
    pub kind: TableKind,
    /// First bit of `R` in its chunk.
    pub lo: u32,
    /// Bits of the chunk (2^width entries).
    pub width: u32,
    /// Bit offset of the table in the row.
    pub offset: u32,
}

/// The tables of one element's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableLayout {
    /// The tables, lowest chunk first.
    pub tables: Vec<Table>,
    /// Words per row.
    pub words: usize,
}

/// Chunks `(lo, width)` of bits `[lo, hi)`: as few as give chunks of at most 8 bits, but at
/// most [`MAX_CHUNKS`]; wider chunks first.
pub fn chunks(lo: u32, hi: u32) -> Vec<(u32, u32)> {
    let bits = hi.saturating_sub(lo);
    let k = bits
        .div_ceil(CHUNK_BITS)
        .clamp(1, MAX_CHUNKS as u32)
        .min(bits.max(1));
    let (base, extra) = (bits / k, bits % k);
    let mut at = lo;
    (0..k)
        .map(|i| {
            let w = base + u32::from(i < extra);
            let c = (at, w);
            at += w;
            c
        })
        .collect()
}

impl TableLayout {
    fn of(kind: TableKind, lo: u32, hi: u32) -> TableLayout {
        let mut tables = Vec::new();
        let mut bits = 0u32;
        for (lo, width) in chunks(lo, hi) {
            let size = 1u32 << width;
            let offset = bits.next_multiple_of(size.min(64));
            tables.push(Table {
                kind,
                lo,
                width,
                offset,
            });
            bits = offset + size;
        }
        TableLayout {
            tables,
            words: bits.div_ceil(64) as usize,
        }
    }

    /// The sign's tables: `Below` tables of the chunks of `R`'s bits `[0, NARROW_BITS - 1)`
    /// (`(8, 8, 8, 7)` bits: 14 words per element).
    pub fn sign() -> TableLayout {
        Self::of(TableKind::Below, 0, NARROW_BITS - 1)
    }

    /// The range check's tables: `Equal` tables of the chunks of `R`'s bits
    /// `[CHECK_LOW_BIT, top)`.
    pub fn check(top: u32) -> TableLayout {
        Self::of(TableKind::Equal, CHECK_LOW_BIT, top)
    }

    /// Write the tables of mask `r` into `row` (`self.words` words, zero on entry).
    pub fn fill(&self, r: u64, row: &mut [u64]) {
        for t in &self.tables {
            let v = (r >> t.lo) & ((1u64 << t.width) - 1);
            let at = t.offset as u64;
            match t.kind {
                TableKind::Equal => {
                    let pos = at + v;
                    row[(pos / 64) as usize] |= 1 << (pos % 64);
                }
                TableKind::Below => {
                    // Bits at..at + v set (v < 2^width <= the table's size).
                    let (mut pos, end) = (at, at + v);
                    while pos < end {
                        let (w, b) = ((pos / 64) as usize, pos % 64);
                        let take = (64 - b).min(end - pos);
                        row[w] |= (u64::MAX >> (64 - take)) << b;
                        pos += take;
                    }
                }
            }
        }
    }

    /// Rows of every mask in `rs`, one after another.
    pub(crate) fn fill_all(&self, rs: &[u64]) -> Vec<u64> {
        let mut out = vec![0u64; rs.len() * self.words];
        if self.words > 0 {
            out.par_chunks_mut(self.words)
                .zip(rs.par_iter())
                .for_each(|(row, &r)| self.fill(r, row));
        }
        out
    }
}

/// Bit `bit` of every value, packed 64 to a word.
pub(crate) fn pack_bit(values: &[u64], bit: u32) -> Vec<u64> {
    let mut out = vec![0u64; values.len().div_ceil(64)];
    for (e, v) in values.iter().enumerate() {
        out[e / 64] |= ((v >> bit) & 1) << (e % 64);
    }
    out
}

/// Packed bits as 0/1 ring values (`n` of them).
pub(crate) fn unpack_bits(packed: &[u64], n: usize) -> Vec<u64> {
    (0..n).map(|e| (packed[e / 64] >> (e % 64)) & 1).collect()
}

/// The dealer's values of a narrow comparison's derived parts (before bob's corrections), in
/// the order of [`crate::dealer::MaterialSpec::parts`]: from the mask `r` (summed shares) and
/// the random packed bits `bits` (`ρ` where `select > 0`, then the check's bit where
/// `check_top > 0`, each XOR of the two parties' parts).
pub(crate) fn narrow_values(
    r: &[u64],
    check_top: u32,
    select: u32,
    bits: &[Vec<u64>],
) -> Vec<Vec<u64>> {
    let n = r.len();
    let mut v = vec![
        TableLayout::sign().fill_all(r),
        pack_bit(r, NARROW_BITS - 1),
    ];
    if check_top > 0 {
        v.push(TableLayout::check(check_top).fill_all(r));
    }
    let mut next = bits.iter();
    if select > 0 {
        let rho = unpack_bits(next.next().expect("the sign's random bit"), n);
        if select == 2 {
            let prod = rho.iter().zip(r).map(|(b, x)| b.wrapping_mul(*x)).collect();
            v.push(rho);
            v.push(prod);
        } else {
            v.push(rho);
        }
    }
    if check_top > 0 {
        v.push(unpack_bits(next.next().expect("the check's random bit"), n));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_cut_windows_into_at_most_four_chunks() {
        let s = TableLayout::sign();
        let widths: Vec<u32> = s.tables.iter().map(|t| t.width).collect();
        assert_eq!(widths, [8, 8, 8, 7]);
        assert_eq!(s.words, 14);
        assert_eq!(chunks(30, 50), [(30, 7), (37, 7), (44, 6)]);
        assert_eq!(chunks(30, 64), [(30, 9), (39, 9), (48, 8), (56, 8)]);
        assert_eq!(chunks(30, 31), [(30, 1)]);
        assert_eq!(TableLayout::check(50).words, 5);
        assert_eq!(check_top_bit(16), 50);
        assert_eq!(check_top_bit(1), 64);
        assert_eq!(check_top_bit(40), 31);
    }

    #[test]
    fn tables_hold_below_and_equal_for_every_entry() {
        let l = TableLayout::check(50);
        let s = TableLayout::sign();
        for r in [
            0u64,
            1,
            u64::MAX,
            0x1234_5678_9abc_def0,
            1 << 31,
            (1 << 30) - 1,
        ] {
            for (layout, kind) in [(&s, TableKind::Below), (&l, TableKind::Equal)] {
                let mut row = vec![0u64; layout.words];
                layout.fill(r, &mut row);
                for t in &layout.tables {
                    let v = (r >> t.lo) & ((1 << t.width) - 1);
                    for j in 0..1u64 << t.width {
                        let pos = t.offset as u64 + j;
                        let bit = (row[(pos / 64) as usize] >> (pos % 64)) & 1;
                        let want = match kind {
                            TableKind::Below => j < v,
                            TableKind::Equal => j == v,
                        };
                        assert_eq!(bit, want as u64, "r {r:#x} chunk {t:?} entry {j}");
                    }
                }
            }
        }
    }
}
