//! Material kinds and the one place that defines how each party's share is drawn.

use rand_chacha::ChaCha12Rng;

/// The generator every piece of dealer material is expanded with: ChaCha with 12 rounds (the
/// `rand` crate's standard generator; the best published attacks reach 7 rounds), seekable, so
/// long parts are expanded in parallel.
pub type MaterialRng = ChaCha12Rng;
use kernels::cpu::prg::chacha12_at;
pub(crate) use kernels::cpu::prg::fill_words;
use kernels::cpu::zeroed_words;

use super::tables::{TableLayout, CHECK_LOW_BIT};
use crate::error::{EngineError, Result};
use crate::nn::geometry::ConvShape;

/// Write words `first..first + out.len()` of the share a 256-bit seed stands for: the
/// [`MaterialRng`] stream keyed by `seed` (stream 0), so any slice of it can be expanded on
/// its own and in parallel. A data owner sends bob such a seed instead of his share of its
/// tensor (see [`crate::owner`]).
pub(crate) fn fill_from_seed(seed: &[u8; 32], first: usize, out: &mut [u64]) {
    let mut rng = chacha12_at(seed, 0, 2 * first as u128);
    fill_words(&mut rng, out);
}

/// One piece of correlated randomness a protocol step needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaterialSpec {
    /// Elementwise Beaver triple `c = a * b` of `n` elements.
    MulTriple {
        /// Elements.
        n: usize,
    },
    /// Matrix Beaver triple `a [m,k]`, `b [k,n]`, `c = a·b [m,n]`.
    MatmulTriple {
        /// Rows of a.
        m: usize,
        /// Inner dimension.
        k: usize,
        /// Columns of b.
        n: usize,
    },
    /// A fixed mask `b [k,n]` for a long-lived operand, kept by the dealer under `fixed_id`.
    FixedMask {
        /// Identifier of the fixed operand.
        fixed_id: u64,
        /// Rows.
        k: usize,
        /// Columns.
        n: usize,
    },
    /// Per-product material for `X [m,k] · W` with `W` fixed: fresh `a [m,k]`, `c = a·b [m,n]`.
    FixedTriple {
        /// Identifier of the fixed operand.
        fixed_id: u64,
        /// Rows of X.
        m: usize,
        /// Inner dimension (rows of W).
        k: usize,
        /// Columns of W.
        n: usize,
    },
    /// Per-product material for the convolution of `X [batch, c, h, w]` by a fixed weight
    /// `W [c·kh·kw, out]`: a fresh activation-shaped mask `a` and `c = im2col(a)·b`
    /// `[pixels, out]` (see [`crate::protocols::conv`]).
    FixedConv {
        /// Identifier of the fixed operand.
        fixed_id: u64,
        /// The convolution's geometry.
        conv: ConvShape,
    },
    /// Truncation pairs: random `r`, with shares of `r >> bits` (logical) and of `msb(r)`.
    Trunc {
        /// Elements.
        n: usize,
        /// Shift.
        bits: u32,
    },
    /// Boolean AND triples on 64-bit words: `c = a & b`, XOR-shared.
    AndTriple {
        /// Words.
        n: usize,
    },
    /// Random bits `r` shared both as XOR bits (packed 64 to a word) and arithmetically, plus for
    /// each of `payloads` vectors a mask `a` and arithmetic shares of `a * r` (the
    /// select-by-secret-bit material).
    BitSelect {
        /// Bits (elements).
        n: usize,
        /// Number of payload vectors to multiply by the bit.
        payloads: usize,
    },
    /// The narrow comparison of `n` values (see [`crate::protocols::compare`]): a random mask
    /// `R` per value; XOR-shared lookup tables of `R`'s low 31 bits and `R`'s bit 31, packed;
    /// with `check_top > 0`, XOR-shared tables of `R`'s bits `[30, check_top)` for the fused
    /// range check and a random bit (packed, and as arithmetic shares) to turn its result
    /// arithmetic; with `select >= 1` a random bit `ρ` likewise for the sign; with
    /// `select == 2` arithmetic shares of `R·ρ` (the payload product).
    NarrowCompare {
        /// Values.
        n: usize,
        /// Top (exclusive) bit of the range check's window; 0: no check.
        check_top: u32,
        /// 0: XOR-shared sign bits; 1: arithmetic sign; 2: arithmetic sign and payload.
        select: u32,
    },
    /// Per element a random `r` in `Z_2^bits` (shared arithmetically mod `2^bits`: each party's
    /// random word, low `bits` bits) and arithmetic shares of the one-hot row `[j == r]` for
    /// `j < 2^bits` (the equality-by-lookup material of small integers).
    OneHot {
        /// Elements.
        n: usize,
        /// Bits of the domain (`2^bits` table entries per element), at most
        /// [`MaterialSpec::MAX_ONE_HOT_BITS`].
        bits: u32,
    },
}

/// Sizes (in u64 words) of a spec's random parts and derived parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartShapes {
    /// Parts each party draws from its own seed.
    pub random: Vec<usize>,
    /// Parts alice draws and bob receives as corrections.
    pub derived: Vec<usize>,
}

/// How bob's correction combines with alice's share of a derived part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Correction {
    /// `bob = value - alice` (mod 2^64).
    Arithmetic,
    /// `bob = value ^ alice`.
    Boolean,
}

const TAG_MUL: u64 = 1;
const TAG_MATMUL: u64 = 2;
const TAG_FIXED_MASK: u64 = 3;
const TAG_FIXED_TRIPLE: u64 = 4;
const TAG_TRUNC: u64 = 5;
const TAG_AND: u64 = 6;
const TAG_SELECT: u64 = 7;
const TAG_ONE_HOT: u64 = 8;
const TAG_NARROW: u64 = 9;
const TAG_FIXED_CONV: u64 = 10;

impl MaterialSpec {
    /// Largest domain of [`MaterialSpec::OneHot`]: tables of 4096 words per element.
    pub const MAX_ONE_HOT_BITS: u32 = 12;

    /// Word sizes of the random and derived parts.
    pub fn parts(&self) -> PartShapes {
        use MaterialSpec::*;
        let (random, derived) = match *self {
            MulTriple { n } => (vec![n, n], vec![n]),
            MatmulTriple { m, k, n } => (vec![m * k, k * n], vec![m * n]),
            FixedMask { k, n, .. } => (vec![k * n], vec![]),
            FixedTriple { m, k, n, .. } => (vec![m * k], vec![m * n]),
            FixedConv { conv, .. } => (
                vec![conv.input_len()],
                vec![conv.pixels() * conv.out_channels()],
            ),
            Trunc { n, .. } => (vec![n], vec![n, n]),
            AndTriple { n } => (vec![n, n], vec![n]),
            BitSelect { n, payloads } => {
                (vec![n.div_ceil(64), payloads * n], vec![n, payloads * n])
            }
            OneHot { n, bits } => (vec![n], vec![n << bits]),
            NarrowCompare {
                n,
                check_top,
                select,
            } => {
                let packed = n.div_ceil(64);
                let (check, sel) = (check_top > 0, select > 0);
                let mut random = vec![n];
                random.extend(sel.then_some(packed));
                random.extend(check.then_some(packed));
                let mut derived = vec![n * TableLayout::sign().words, packed];
                derived.extend(check.then(|| n * TableLayout::check(check_top).words));
                derived.extend(sel.then_some(n));
                derived.extend((select == 2).then_some(n));
                derived.extend(check.then_some(n));
                (random, derived)
            }
        };
        PartShapes { random, derived }
    }

    /// Words of all parts (random and derived) of one party's share, or `None` if a size
    /// overflows. Untrusted specs (a dealer request) are checked with this before [`Self::parts`]
    /// multiplies their dimensions.
    pub fn checked_words(&self) -> Option<u64> {
        use MaterialSpec::*;
        let mul = |a: usize, b: usize| (a as u64).checked_mul(b as u64);
        let sum = |xs: &[Option<u64>]| {
            xs.iter()
                .try_fold(0u64, |acc, x| x.and_then(|x| acc.checked_add(x)))
        };
        match *self {
            MulTriple { n } | AndTriple { n } => mul(n, 3),
            MatmulTriple { m, k, n } => sum(&[mul(m, k), mul(k, n), mul(m, n)]),
            FixedMask { k, n, .. } => mul(k, n),
            FixedTriple { m, k, n, .. } => sum(&[mul(m, k), mul(m, n)]),
            // Checked by `ConvShape::new`: neither size overflows.
            FixedConv { conv, .. } => sum(&[
                Some(conv.input_len() as u64),
                mul(conv.pixels(), conv.out_channels()),
            ]),
            Trunc { n, .. } => mul(n, 3),
            BitSelect { n, payloads } => {
                let pn = mul(payloads, n);
                sum(&[Some(n.div_ceil(64) as u64), pn, Some(n as u64), pn])
            }
            OneHot { n, bits } if (1..=Self::MAX_ONE_HOT_BITS).contains(&bits) => {
                sum(&[Some(n as u64), mul(n, 1 << bits)])
            }
            OneHot { .. } => None,
            NarrowCompare {
                n,
                check_top,
                select,
            } if Self::narrow_params_ok(check_top, select) => {
                // At most this many words per value (tables, masks, packed bits rounded up);
                // once that cannot overflow, the parts' exact sum cannot either.
                let check = if check_top > 0 {
                    TableLayout::check(check_top).words
                } else {
                    0
                };
                mul(n, TableLayout::sign().words + check + 8)?;
                let p = self.parts();
                Some(p.random.iter().chain(&p.derived).map(|&w| w as u64).sum())
            }
            NarrowCompare { .. } => None,
        }
    }

    /// Whether a [`MaterialSpec::NarrowCompare`]'s check window and selection are valid.
    fn narrow_params_ok(check_top: u32, select: u32) -> bool {
        (check_top == 0 || (CHECK_LOW_BIT + 1..=64).contains(&check_top)) && select <= 2
    }

    /// How each derived part is corrected (in the order of [`PartShapes::derived`]).
    pub fn corrections(&self) -> Vec<Correction> {
        let n = self.parts().derived.len();
        match self {
            MaterialSpec::AndTriple { .. } => vec![Correction::Boolean; n],
            // Tables and the mask's top bit are XOR-shared, the rest arithmetic.
            MaterialSpec::NarrowCompare { check_top, .. } => {
                let boolean = if *check_top > 0 { 3 } else { 2 };
                (0..n)
                    .map(|i| {
                        if i < 2 || (i == 2 && boolean == 3) {
                            Correction::Boolean
                        } else {
                            Correction::Arithmetic
                        }
                    })
                    .collect()
            }
            _ => vec![Correction::Arithmetic; n],
        }
    }

    /// Encode as request words.
    pub fn encode(&self, out: &mut Vec<u64>) {
        use MaterialSpec::*;
        let w = |x: usize| x as u64;
        match *self {
            MulTriple { n } => out.extend([TAG_MUL, w(n), 0, 0, 0]),
            MatmulTriple { m, k, n } => out.extend([TAG_MATMUL, w(m), w(k), w(n), 0]),
            FixedMask { fixed_id, k, n } => out.extend([TAG_FIXED_MASK, fixed_id, w(k), w(n), 0]),
            FixedTriple { fixed_id, m, k, n } => {
                out.extend([TAG_FIXED_TRIPLE, fixed_id, w(m), w(k), w(n)])
            }
            FixedConv { fixed_id, conv } => {
                let [a, b, c] = conv.pack();
                out.extend([TAG_FIXED_CONV, fixed_id, a, b, c])
            }
            Trunc { n, bits } => out.extend([TAG_TRUNC, w(n), bits as u64, 0, 0]),
            AndTriple { n } => out.extend([TAG_AND, w(n), 0, 0, 0]),
            BitSelect { n, payloads } => out.extend([TAG_SELECT, w(n), w(payloads), 0, 0]),
            OneHot { n, bits } => out.extend([TAG_ONE_HOT, w(n), bits as u64, 0, 0]),
            NarrowCompare {
                n,
                check_top,
                select,
            } => out.extend([TAG_NARROW, w(n), u64::from(check_top), u64::from(select), 0]),
        }
    }

    /// Words per encoded spec.
    pub const ENCODED_WORDS: usize = 5;

    /// Decode request words produced by [`MaterialSpec::encode`].
    pub fn decode(w: &[u64]) -> Result<MaterialSpec> {
        use MaterialSpec::*;
        if w.len() != Self::ENCODED_WORDS {
            return Err(EngineError::Protocol("truncated material request".into()));
        }
        let u = |x: u64| x as usize;
        Ok(match w[0] {
            TAG_MUL => MulTriple { n: u(w[1]) },
            TAG_MATMUL => MatmulTriple {
                m: u(w[1]),
                k: u(w[2]),
                n: u(w[3]),
            },
            TAG_FIXED_MASK => FixedMask {
                fixed_id: w[1],
                k: u(w[2]),
                n: u(w[3]),
            },
            TAG_FIXED_TRIPLE => FixedTriple {
                fixed_id: w[1],
                m: u(w[2]),
                k: u(w[3]),
                n: u(w[4]),
            },
            TAG_FIXED_CONV => FixedConv {
                fixed_id: w[1],
                conv: ConvShape::unpack([w[2], w[3], w[4]])
                    .map_err(|e| EngineError::Protocol(format!("material request: {e}")))?,
            },
            TAG_TRUNC => Trunc {
                n: u(w[1]),
                // Refused rather than cut to 32 bits (an altered width must never pass as another).
                bits: u32::try_from(w[2]).map_err(|_| {
                    EngineError::Protocol(format!("truncation width {} out of range", w[2]))
                })?,
            },
            TAG_AND => AndTriple { n: u(w[1]) },
            TAG_SELECT => BitSelect {
                n: u(w[1]),
                payloads: u(w[2]),
            },
            TAG_ONE_HOT => OneHot {
                n: u(w[1]),
                bits: match u32::try_from(w[2]) {
                    Ok(b) if (1..=Self::MAX_ONE_HOT_BITS).contains(&b) => b,
                    _ => {
                        return Err(EngineError::Protocol(format!(
                            "one-hot domain of {} bits out of range (1..={})",
                            w[2],
                            Self::MAX_ONE_HOT_BITS
                        )))
                    }
                },
            },
            TAG_NARROW => {
                let (check_top, select) = match (u32::try_from(w[2]), u32::try_from(w[3])) {
                    (Ok(c), Ok(s)) if Self::narrow_params_ok(c, s) => (c, s),
                    _ => {
                        return Err(EngineError::Protocol(format!(
                        "narrow comparison with check window top {} and selection {} out of range",
                        w[2], w[3]
                    )))
                    }
                };
                NarrowCompare {
                    n: u(w[1]),
                    check_top,
                    select,
                }
            }
            t => return Err(EngineError::Protocol(format!("unknown material tag {t}"))),
        })
    }
}

/// The parts every party draws from its own stream (masks, random values, random bits).
pub fn draw_random_parts(spec: &MaterialSpec, rng: &mut MaterialRng) -> Vec<Vec<u64>> {
    spec.parts()
        .random
        .iter()
        .map(|&len| {
            let mut v = zeroed_words(len);
            fill_words(rng, &mut v);
            v
        })
        .collect()
}

/// A party's share of `spec` expanded from its stream (in host memory).
///
/// Alice (`index == 0`) draws random and derived parts from the stream; bob draws the random
/// parts and takes the derived parts from the dealer's `corrections` (concatenated).
/// The dealer calls the same functions to know both parties' random parts and alice's derived
/// parts, so the two sides can never disagree on the drawing order.
pub fn expand_party_share(
    spec: &MaterialSpec,
    index: usize,
    rng: &mut MaterialRng,
    corrections: Option<&[u64]>,
) -> Result<Vec<Vec<u64>>> {
    expand_with(
        spec,
        index,
        corrections,
        |len| {
            let mut v = zeroed_words(len);
            fill_words(rng, &mut v);
            Ok(v)
        },
        |c| Ok(c.to_vec()),
    )
}

/// The drawing order of a party's share of `spec`, wherever the parts are made: `draw(len)`
/// makes the next `len` words of the party's stream, `take(words)` a part from bob's
/// corrections. Random parts first, then derived parts (drawn by alice, corrections for bob).
pub fn expand_with<T>(
    spec: &MaterialSpec,
    index: usize,
    corrections: Option<&[u64]>,
    mut draw: impl FnMut(usize) -> Result<T>,
    mut take: impl FnMut(&[u64]) -> Result<T>,
) -> Result<Vec<T>> {
    let shapes = spec.parts();
    let mut parts = Vec::with_capacity(shapes.random.len() + shapes.derived.len());
    for &len in &shapes.random {
        parts.push(draw(len)?);
    }
    if index == 0 {
        for &len in &shapes.derived {
            parts.push(draw(len)?);
        }
    } else {
        let corr = corrections.unwrap_or(&[]);
        let need: usize = shapes.derived.iter().sum();
        if corr.len() != need {
            return Err(EngineError::Protocol(format!(
                "dealer sent {} correction words for {spec:?}, expected {need}",
                corr.len()
            )));
        }
        let mut off = 0;
        for &len in &shapes.derived {
            parts.push(take(&corr[off..off + len])?);
            off += len;
        }
    }
    Ok(parts)
}
