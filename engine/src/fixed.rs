//! Fixed-point encoding of reals into Z_2^64 (two's complement, `frac_bits` fractional bits).

use crate::error::{EngineError, Result};

/// Default number of fractional bits.
pub const DEFAULT_FRAC_BITS: u32 = 16;

/// A fixed-point format: a real `v` is stored as `round(v · 2^frac_bits)` mod 2^64.
///
/// **Range.** Encoded magnitudes are limited to `2^31` ring units (so `|v| < 2^(31 - f)`,
/// ±32768 at f = 16): the product of any two in-range values then stays below `2^62`, which
/// is the precondition of the truncation protocol (randomised rounding, error below one unit).
/// Sums of many products (matmul) must also stay below `2^62` before truncation, i.e. below
/// `2^(62 - 2f)` in real terms; [`crate::nn::range`] proves this for a model before sharing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedPoint {
    frac_bits: u32,
}

impl Default for FixedPoint {
    fn default() -> Self {
        FixedPoint {
            frac_bits: DEFAULT_FRAC_BITS,
        }
    }
}

/// Magnitude bound of encoded values, in ring units.
pub const MAX_ENCODED_BITS: u32 = 31;

impl FixedPoint {
    /// A format with `frac_bits` fractional bits (1..=24).
    pub fn new(frac_bits: u32) -> Result<Self> {
        if !(1..=24).contains(&frac_bits) {
            return Err(EngineError::Invalid(format!(
                "fractional bits must be in 1..=24, got {frac_bits}"
            )));
        }
        Ok(FixedPoint { frac_bits })
    }

    /// Number of fractional bits.
    pub fn frac_bits(&self) -> u32 {
        self.frac_bits
    }

    /// The scale factor `2^frac_bits`.
    pub fn scale(&self) -> f64 {
        (1u64 << self.frac_bits) as f64
    }

    /// Largest encodable magnitude (exclusive bound is `2^(31-f)`; this is the last value below it).
    pub fn max_abs(&self) -> f64 {
        (((1u64 << MAX_ENCODED_BITS) - 1) as f64) / self.scale()
    }

    /// Encode one value; `index` only labels the error.
    pub fn encode_one(&self, value: f64, index: usize) -> Result<u64> {
        if !value.is_finite() {
            return Err(EngineError::NotFinite { value, index });
        }
        let scaled = (value * self.scale()).round();
        if scaled.abs() >= (1u64 << MAX_ENCODED_BITS) as f64 {
            return Err(EngineError::OutOfRange {
                value,
                index,
                max: self.max_abs(),
                frac_bits: self.frac_bits,
            });
        }
        Ok((scaled as i64) as u64)
    }

    /// Encode a slice of reals.
    pub fn encode(&self, values: &[f64]) -> Result<Vec<u64>> {
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| self.encode_one(v, i))
            .collect()
    }

    /// Check that every value is encodable, without allocating.
    pub fn check(&self, values: &[f64]) -> Result<()> {
        for (i, &v) in values.iter().enumerate() {
            self.encode_one(v, i)?;
        }
        Ok(())
    }

    /// Decode one ring element (interpreted as a signed two's-complement value).
    pub fn decode_one(&self, x: u64) -> f64 {
        (x as i64) as f64 / self.scale()
    }

    /// Decode a slice.
    pub fn decode(&self, xs: &[u64]) -> Vec<f64> {
        xs.iter().map(|&x| self.decode_one(x)).collect()
    }
}

/// Offset making every in-range pre-truncation value non-negative (alice folds it into her share
/// of the mask when the material is fetched).
pub(crate) const TRUNC_OFFSET_BITS: u32 = 62;
