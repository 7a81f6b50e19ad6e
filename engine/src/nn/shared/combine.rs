//! Shared layers that read several values: the residual `Add` (a local sum of shares) and
//! `Concat` along the first per-sample axis (a local re-layout). Neither communicates nor uses
//! dealer material.

use crate::dealer::MaterialSpec;
use crate::error::{shape_err, Result};
use crate::nn::geometry::check_addressable;
use crate::party::Party;
use crate::share::Share;

use super::SharedLayer;

/// The elementwise sum of values of one shape.
#[derive(Clone, Debug)]
pub struct SharedAdd {
    inputs: usize,
}

impl SharedAdd {
    /// A sum of `inputs` values.
    pub fn new(inputs: usize) -> Self {
        SharedAdd { inputs }
    }
}

impl SharedLayer for SharedAdd {
    fn name(&self) -> String {
        "Add".into()
    }
    fn material(&self, _batch: usize, _frac_bits: u32) -> Vec<MaterialSpec> {
        Vec::new()
    }
    fn forward(&self, _p: &mut Party, _x: &Share) -> Result<Share> {
        Err(shape_err(
            "add",
            format!("Add reads {} values, not one", self.inputs),
        ))
    }
    fn forward_inputs(&self, p: &mut Party, xs: &[&Share]) -> Result<Share> {
        if xs.len() != self.inputs {
            return Err(shape_err(
                "add",
                format!("{} values for an Add of {}", xs.len(), self.inputs),
            ));
        }
        let mut y = xs[0].clone();
        for x in &xs[1..] {
            if x.shape() != y.shape() {
                return Err(shape_err(
                    "add",
                    format!("{:?} vs {:?}", y.shape(), x.shape()),
                ));
            }
            y = p.add(&y, x)?;
        }
        Ok(y)
    }
}

/// Per sample, the values' elements one after the other: a concatenation along the first
/// per-sample axis (channels of NCHW images).
#[derive(Clone, Debug)]
pub struct SharedConcat {
    /// Elements per sample of each input.
    per: Vec<usize>,
    /// Per-sample output shape.
    output: Vec<usize>,
}

impl SharedConcat {
    /// A concatenation of values of per-sample shapes `inputs` (equal but for the first axis).
    pub fn new(inputs: &[Vec<usize>]) -> Result<Self> {
        let first = inputs
            .first()
            .filter(|s| !s.is_empty() && inputs.len() >= 2);
        let Some(first) = first else {
            return Err(shape_err("concat", format!("inputs {inputs:?}")));
        };
        let mut output = first.clone();
        for s in &inputs[1..] {
            if s.len() != first.len() || s[1..] != first[1..] {
                return Err(shape_err(
                    "concat",
                    format!("{first:?} and {s:?} differ beyond their first axis"),
                ));
            }
            output[0] += s[0];
        }
        Ok(SharedConcat {
            per: inputs.iter().map(|s| s.iter().product()).collect(),
            output,
        })
    }

    /// The gather index from the inputs laid end to end (each `[n, per]`) to `[n, Σ per]`.
    fn index(&self, n: usize) -> Vec<u32> {
        let total: usize = self.per.iter().sum();
        let mut starts = Vec::with_capacity(self.per.len());
        let mut at = 0;
        for p in &self.per {
            starts.push(at);
            at += n * p;
        }
        let mut index = Vec::with_capacity(n * total);
        for b in 0..n {
            for (s, p) in starts.iter().zip(&self.per) {
                index.extend((s + b * p..s + (b + 1) * p).map(|i| i as u32));
            }
        }
        index
    }
}

impl SharedLayer for SharedConcat {
    fn name(&self) -> String {
        "Concat".into()
    }
    fn material(&self, _batch: usize, _frac_bits: u32) -> Vec<MaterialSpec> {
        Vec::new()
    }
    fn forward(&self, _p: &mut Party, _x: &Share) -> Result<Share> {
        Err(shape_err(
            "concat",
            format!("Concat reads {} values, not one", self.per.len()),
        ))
    }
    fn forward_inputs(&self, p: &mut Party, xs: &[&Share]) -> Result<Share> {
        let n = xs
            .first()
            .and_then(|x| x.shape().first())
            .copied()
            .unwrap_or(0);
        let fits =
            xs.len() == self.per.len() && xs.iter().zip(&self.per).all(|(x, p)| x.len() == n * p);
        if !fits {
            return Err(shape_err(
                "concat",
                format!(
                    "inputs {:?} for samples of {:?} elements",
                    xs.iter().map(|x| x.shape().to_vec()).collect::<Vec<_>>(),
                    self.per
                ),
            ));
        }
        let total = n * self.per.iter().sum::<usize>();
        check_addressable("concat", total)?;
        let all = p.concat(xs)?;
        let mut shape = vec![n];
        shape.extend(&self.output);
        p.gather(&all, &self.index(n), &shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_index_interleaves_samples() {
        // Two samples of [1, 2] and [2, 2] values: per sample 2 + 4 elements.
        let c = SharedConcat::new(&[vec![1, 2], vec![2, 2]]).unwrap();
        assert_eq!(c.output, vec![3, 2]);
        // Inputs end to end: a0 a0' a1 a1' | b0.. (4 per sample).
        assert_eq!(c.index(2), vec![0, 1, 4, 5, 6, 7, 2, 3, 8, 9, 10, 11]);
        assert!(SharedConcat::new(&[vec![1, 2], vec![2, 3]]).is_err());
    }
}
