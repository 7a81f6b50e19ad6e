//! How the layers of a model are connected: a directed acyclic graph whose nodes are the
//! layers, in topological order.
//!
//! Values are numbered: value 0 is the model's input, value `i + 1` the output of layer `i`.
//! Layer `i` reads the values listed in [`Wiring::inputs`] (all below `i + 1`), so evaluating the
//! layers in index order always finds their inputs computed; the model's output is the last
//! layer's. A chain (PyTorch's `nn.Sequential`) reads the previous value everywhere. Evaluation
//! ([`Wiring::evaluate`]) keeps a value only until its last reader has run, so a chain holds one
//! activation at a time, as before graphs existed, and a residual block holds its shortcut
//! only while the block runs.

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// Which values each layer reads (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wiring {
    inputs: Vec<Vec<usize>>,
}

impl Wiring {
    /// `layers` layers, each reading the previous one's output (the first reads the input).
    pub fn chain(layers: usize) -> Wiring {
        Wiring {
            inputs: (0..layers).map(|i| vec![i]).collect(),
        }
    }

    /// Layer `i` reads `inputs[i]`; checked with [`Wiring::check`] by the models that hold it.
    pub fn new(inputs: Vec<Vec<usize>>) -> Wiring {
        Wiring { inputs }
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    /// Whether there are no layers.
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// The values layer `layer` reads.
    pub fn inputs(&self, layer: usize) -> &[usize] {
        &self.inputs[layer]
    }

    /// Whether every layer reads exactly the previous value.
    pub fn is_chain(&self) -> bool {
        self.inputs
            .iter()
            .enumerate()
            .all(|(i, v)| v.as_slice() == [i])
    }

    /// Check the wiring of `layers` layers: each layer reads at least one value, only values
    /// computed before it, and every value but the output is read by some layer (a result
    /// nobody reads would be computed for nothing).
    pub fn check(&self, layers: usize) -> Result<()> {
        let bad = |m: String| Err(EngineError::Invalid(format!("model graph: {m}")));
        if self.inputs.len() != layers {
            return bad(format!(
                "{} layers but inputs listed for {}",
                layers,
                self.inputs.len()
            ));
        }
        let mut read = vec![false; layers + 1];
        for (i, vs) in self.inputs.iter().enumerate() {
            if vs.is_empty() {
                return bad(format!("layer {i} reads no value"));
            }
            for &v in vs {
                if v > i {
                    return bad(format!(
                        "layer {i} reads value {v}, which is not computed before it"
                    ));
                }
                read[v] = true;
            }
        }
        if let Some(v) = read[..layers].iter().position(|r| !r) {
            return bad(match v {
                0 => "no layer reads the model's input".to_string(),
                v => format!("the output of layer {} is never used", v - 1),
            });
        }
        Ok(())
    }

    /// For every value, the last layer that reads it (`usize::MAX` for the output, which
    /// outlives the layers).
    fn last_reads(&self) -> Vec<usize> {
        let mut last = vec![usize::MAX; self.inputs.len() + 1];
        for (i, vs) in self.inputs.iter().enumerate() {
            for &v in vs {
                last[v] = i;
            }
        }
        last[self.inputs.len()] = usize::MAX;
        last
    }

    /// The layers that read value `value`.
    pub fn readers(&self, value: usize) -> Vec<usize> {
        (0..self.inputs.len())
            .filter(|&i| self.inputs[i].contains(&value))
            .collect()
    }

    /// Evaluate the layers in order from `input`: `step(layer, inputs)` computes a layer's
    /// output from its input values. A value is dropped as soon as its last reader has run.
    /// Returns the output (the last layer's value; `input` itself for no layers).
    pub fn evaluate<T, E: From<EngineError>>(
        &self,
        input: T,
        mut step: impl FnMut(usize, &[&T]) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let n = self.inputs.len();
        let last = self.last_reads();
        let mut values: Vec<Option<T>> = (0..=n).map(|_| None).collect();
        values[0] = Some(input);
        for i in 0..n {
            let out = {
                let args = self.inputs[i]
                    .iter()
                    .map(|&v| {
                        values.get(v).and_then(Option::as_ref).ok_or_else(|| {
                            EngineError::Invalid(format!(
                                "model graph: layer {i} reads value {v}, which is not live"
                            ))
                        })
                    })
                    .collect::<Result<Vec<&T>>>()
                    .map_err(E::from)?;
                step(i, &args)?
            };
            for &v in &self.inputs[i] {
                if last[v] == i {
                    values[v] = None;
                }
            }
            values[i + 1] = Some(out);
        }
        values[n]
            .take()
            .ok_or_else(|| E::from(EngineError::Invalid("model graph: no output".into())))
    }

    /// The wiring after removing layer `layer`, which reads the single value `v`: its readers
    /// read `v` instead, and later values shift down by one.
    pub fn without_layer(&self, layer: usize) -> Wiring {
        let source = self.inputs[layer][0];
        let renumber = |v: usize| match v.cmp(&(layer + 1)) {
            std::cmp::Ordering::Less => v,
            std::cmp::Ordering::Equal => source,
            std::cmp::Ordering::Greater => v - 1,
        };
        Wiring {
            inputs: self
                .inputs
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != layer)
                .map(|(_, vs)| vs.iter().map(|&v| renumber(v)).collect())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluation_follows_the_graph_and_drops_dead_values() {
        // x -> a = x + 1 -> b = 2a -> c = a + b (a residual).
        let w = Wiring::new(vec![vec![0], vec![1], vec![1, 2]]);
        w.check(3).unwrap();
        assert!(!w.is_chain());
        let mut live_max = 0;
        let out = w
            .evaluate(3i64, |i, xs| -> Result<i64> {
                live_max = live_max.max(xs.len());
                Ok(match i {
                    0 => xs[0] + 1,
                    1 => 2 * xs[0],
                    _ => xs[0] + xs[1],
                })
            })
            .unwrap();
        assert_eq!(out, 12);
        assert_eq!(w.readers(1), vec![1, 2]);
        assert!(Wiring::chain(4).is_chain());
        Wiring::chain(4).check(4).unwrap();
    }

    #[test]
    fn bad_wirings_are_refused_by_name() {
        let e = |w: Vec<Vec<usize>>| Wiring::new(w).check(2).unwrap_err().to_string();
        assert!(e(vec![vec![0], vec![2]]).contains("not computed before it"));
        assert!(e(vec![vec![0], vec![]]).contains("layer 1 reads no value"));
        assert!(e(vec![vec![0], vec![0]]).contains("output of layer 0 is never used"));
        assert!(e(vec![vec![0]]).contains("2 layers but inputs listed for 1"));
    }

    #[test]
    fn removing_a_layer_rewires_its_readers() {
        // 0 -> L0 -> L1 -> L2(reads 1 and 2): removing L1 makes L2 read 1 twice... (1 and 1).
        let w = Wiring::new(vec![vec![0], vec![1], vec![1, 2]]);
        assert_eq!(w.without_layer(1), Wiring::new(vec![vec![0], vec![1, 1]]));
        let c = Wiring::chain(3).without_layer(0);
        assert_eq!(c, Wiring::chain(2));
    }
}
